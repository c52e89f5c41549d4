"""Random selection: the floor every significance-driven method must beat."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fopru.layout import Budget, Grid
from fopru.seeding import row_uniform
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs


@dataclass(frozen=True)
class RandomStrategy(PruningStrategy):
    """Keep ``max(1, floor(keep * n))`` tokens drawn uniformly without replacement, ignoring significance.

    With ``inputs.sample_keys`` (the evaluation always passes them) each sample's draw depends only on ``seed`` and
    the sample (:mod:`fopru.seeding`), whatever its batch, shard or run; without them draws come from a generator
    seeded with ``seed`` at construction, so the same seed and sequence of calls give the same selections.
    """

    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "generator", torch.Generator().manual_seed(self.seed))

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        count = budget.count(significance.shape[1], num_tokens)
        rows, tokens = significance.shape
        noise = row_uniform((rows, tokens), self.seed, inputs.sample_keys, self.generator, "strategy")
        return Selection(noise.argsort(dim=1)[:, :count].to(significance.device))
