"""Pruning strategies: which visual tokens to keep."""

from fopru.strategies.base import PruningStrategy, Selection, top_indices
from fopru.strategies.none import KeepAllStrategy
from fopru.strategies.pool import PoolStrategy
from fopru.strategies.random import RandomStrategy
from fopru.strategies.rank import RankStrategy
from fopru.strategies.row import RowStrategy
from fopru.strategies.uniform import UniformStrategy

__all__ = [
    "KeepAllStrategy",
    "PoolStrategy",
    "PruningStrategy",
    "RandomStrategy",
    "RankStrategy",
    "RowStrategy",
    "Selection",
    "UniformStrategy",
    "top_indices",
]
