"""Pruning strategies: which visual tokens to keep."""

from fopru.strategies.adafv import AdaFVStrategy
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices
from fopru.strategies.divprune import DivPruneStrategy
from fopru.strategies.none import KeepAllStrategy
from fopru.strategies.pool import PoolStrategy
from fopru.strategies.prumerge import PruMergePlusStrategy, PruMergeStrategy
from fopru.strategies.random import RandomStrategy
from fopru.strategies.rank import RankStrategy
from fopru.strategies.row import RowStrategy
from fopru.strategies.uniform import UniformStrategy
from fopru.strategies.visionzip import VisionZipStrategy
from fopru.strategies.vispruner import VisPrunerStrategy

__all__ = [
    "AdaFVStrategy",
    "DivPruneStrategy",
    "KeepAllStrategy",
    "PoolStrategy",
    "PruMergePlusStrategy",
    "PruMergeStrategy",
    "PruningStrategy",
    "RandomStrategy",
    "RankStrategy",
    "RowStrategy",
    "Selection",
    "StrategyInputs",
    "UniformStrategy",
    "VisPrunerStrategy",
    "VisionZipStrategy",
    "top_indices",
]
