"""How visual tokens are laid out, and how many of them a budget keeps.

Both objects are plain values: every significance source, strategy and reorder policy receives them instead of a
model, which is what lets one method run on every adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from fopru.errors import ConfigError

Grid = tuple[int, int]


@dataclass(frozen=True)
class VisualLayout:
    """Where the N visual tokens of one sample sit.

    Attributes:
        num_tokens: N, the number of visual tokens a strategy chooses from ([CLS] never counts).
        grids: one (rows, cols) patch grid per image or tile, concatenated in raster order, so that
            ``sum(rows * cols) == num_tokens``; ``None`` for tokens without 2-D structure.
        has_cls: the vision encoder prepends a [CLS] token to its sequence (CLIP: yes, SigLIP: no).
        merge: spatial merge factor applied after the encoder (Qwen2-VL merges 2x2 patches: 2; LLaVA: 1).
            The grids above are always those of the tokens the strategy selects, i.e. after merging.
    """

    num_tokens: int
    grids: tuple[Grid, ...] | None = None
    has_cls: bool = True
    merge: int = 1

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ConfigError(f"a layout needs at least one visual token, got num_tokens={self.num_tokens}")
        if self.merge < 1:
            raise ConfigError(f"merge must be a positive integer, got merge={self.merge}")
        if self.grids is not None:
            if not self.grids or any(rows < 1 or cols < 1 for rows, cols in self.grids):
                raise ConfigError(f"every grid needs rows >= 1 and cols >= 1, got grids={self.grids}")
            total = sum(rows * cols for rows, cols in self.grids)
            if total != self.num_tokens:
                raise ConfigError(
                    f"grids {self.grids} hold {total} tokens but num_tokens={self.num_tokens}; "
                    "the grids must cover the visual tokens exactly"
                )

    @classmethod
    def from_grid(cls, grid: Grid, has_cls: bool = True) -> VisualLayout:
        """A single image laid out as one ``(rows, cols)`` grid."""
        rows, cols = (int(value) for value in grid)
        if rows < 1 or cols < 1:
            raise ConfigError(f"grid must be (rows, cols) with both >= 1, got grid={tuple(grid)}")
        return cls(num_tokens=rows * cols, grids=((rows, cols),), has_cls=has_cls)

    def require_grids(self, who: str) -> tuple[Grid, ...]:
        """The grids, or a clear error for a method that needs 2-D structure."""
        if self.grids is None:
            raise ConfigError(
                f"the {who} strategy needs a patch grid, but this layout has none (N={self.num_tokens} tokens "
                "without rows and columns); use a grid-free strategy such as rank or random"
            )
        return self.grids

    def spans(self) -> list[tuple[int, Grid | None]]:
        """(offset, grid) of every image/tile; a grid-free layout is one span with grid ``None``."""
        if self.grids is None:
            return [(0, None)]
        spans: list[tuple[int, Grid | None]] = []
        offset = 0
        for grid in self.grids:
            spans.append((offset, grid))
            offset += grid[0] * grid[1]
        return spans

    def check_significance(self, significance: torch.Tensor) -> None:
        """Raise a clear error unless ``significance`` is a finite float (B, N) tensor matching this layout."""
        if significance.ndim != 2:
            raise ConfigError(f"significance must be a (batch, tokens) tensor, got shape {tuple(significance.shape)}")
        if significance.shape[1] != self.num_tokens:
            raise ConfigError(
                f"significance has {significance.shape[1]} tokens per sample but the layout has "
                f"{self.num_tokens} (grids={self.grids})"
            )
        if not significance.is_floating_point():
            raise ConfigError(f"significance must be a float tensor, got dtype {significance.dtype}")
        finite = torch.isfinite(significance)
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ConfigError(
                f"significance contains NaN or inf (first at sample {bad[0]}, token {bad[1]}: "
                f"{significance[bad[0], bad[1]].item()}); check the tapped layer and the dtype"
            )


@dataclass(frozen=True)
class Budget:
    """How many visual tokens to keep.

    ``keep`` is a fraction in (0, 1]; ``keep_tokens``, when given, is an absolute count that overrides it.
    Counts are taken per image/tile as ``max(1, floor(fraction * units))`` with exact decimal arithmetic (``keep=0.29``
    of 100 tokens keeps 29, not 28 as binary floating point would), where the fraction is ``keep_tokens / N`` for an
    absolute budget.
    """

    keep: float = 1.0
    keep_tokens: int | None = None

    def __post_init__(self) -> None:
        keep = self.keep
        if isinstance(keep, bool) or not isinstance(keep, int | float):
            raise ConfigError(f"keep must be a number in (0, 1], got keep={keep!r}")
        if not math.isfinite(keep) or not 0 < keep <= 1:
            raise ConfigError(
                f"keep={keep} is not a valid budget: keep is the fraction of visual tokens kept and must lie in "
                "(0, 1] (e.g. keep=0.25); for an absolute count use keep_tokens=<int>"
            )
        if self.keep_tokens is not None:
            tokens = self.keep_tokens
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise ConfigError(
                    f"keep_tokens={tokens!r} is not a valid budget: it must be a whole number >= 1 "
                    "(or null to use the keep fraction)"
                )

    def fraction(self, num_tokens: int) -> Fraction:
        """The kept fraction as an exact rational, checking ``keep_tokens`` against N."""
        if self.keep_tokens is None:
            return Fraction(repr(float(self.keep)))
        if self.keep_tokens > num_tokens:
            raise ConfigError(
                f"keep_tokens={self.keep_tokens} exceeds the {num_tokens} visual tokens of this layout; "
                f"choose 1 <= keep_tokens <= {num_tokens}"
            )
        return Fraction(self.keep_tokens, num_tokens)

    def count(self, units: int, num_tokens: int) -> int:
        """``max(1, floor(fraction * units))``: tokens of a span for rank, rows of a grid for row."""
        return max(1, math.floor(self.fraction(num_tokens) * units))
