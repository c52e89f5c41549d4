"""Reorder policies: the order of kept tokens and their position ids."""

from fopru.reorder.base import ReorderPolicy
from fopru.reorder.policies import OriginalOrder, SignificanceOrder, StrategyOrder

__all__ = ["OriginalOrder", "ReorderPolicy", "SignificanceOrder", "StrategyOrder"]
