"""Every config group and the base class its components must be: what the config tests build each file against.

It sits above every component kind (it imports them all), so nothing in the package imports it.
"""

from __future__ import annotations

from fopru.data.base import Benchmark
from fopru.eval.tracking import ResultLogger
from fopru.llm_pruning.base import LLMPruning
from fopru.models.base import TargetModel
from fopru.reorder.base import ReorderPolicy
from fopru.significance.base import SignificanceSource
from fopru.strategies.base import PruningStrategy
from fopru.train.recipe import TrainingRecipe

BASES: dict[str, type] = {
    "significance": SignificanceSource,
    "strategy": PruningStrategy,
    "reorder": ReorderPolicy,
    "model": TargetModel,
    "data": Benchmark,
    "logger": ResultLogger,
    "llm_pruning": LLMPruning,
    "train": TrainingRecipe,
}
