"""The reorder-policy contract: the order kept tokens reach the LLM in, and their position ids."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from fopru.errors import ConfigError
from fopru.strategies.base import Selection

Positions = Literal["auto", "compact", "original"]
POSITIONS: tuple[str, ...] = ("auto", "compact", "original")


@dataclass(frozen=True)
class ReorderPolicy(ABC):
    """Permutes a selection's tokens, and says which position ids the adapter gives them.

    ``permutation(selection, significance)`` returns a (B, k) int64 permutation of ``range(k)`` per sample (the
    new order of the selection's columns); ``apply`` uses it on indices and merge weights alike, so the kept set
    never changes, only its order.

    ``positions`` is honoured by the adapters: ``compact`` re-indexes the k kept tokens 0..k-1 after the text
    before them (LLaVA's natural behaviour, default for 1-D RoPE models); ``original`` keeps each token's offset
    within the unpruned image (the only correct choice for Qwen2-VL's M-RoPE); ``auto`` (default) lets the adapter
    pick its family's natural mode (compact for LLaVA, original for Qwen).

    A policy is a small frozen dataclass whose fields are its config keys (``conf/reorder/<name>.yaml`` minus
    ``_target_``); its ``repr`` is the configuration the log shows.
    """

    positions: Positions = "auto"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions={self.positions!r} is not one of {list(POSITIONS)}")

    @abstractmethod
    def permutation(self, selection: Selection, significance: torch.Tensor) -> torch.Tensor:
        """(B, k) permutation of the selection's columns."""

    def apply(self, selection: Selection, significance: torch.Tensor) -> Selection:
        """The selection with its tokens in this policy's order."""
        order = self.permutation(selection, significance)
        weights = selection.weights
        if weights is not None:
            weights = weights.gather(1, order[:, :, None].expand(-1, -1, weights.shape[2]))
        return Selection(selection.indices.gather(1, order), weights)
