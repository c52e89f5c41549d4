"""In-LLM visual-token pruning (FastV, VTW, PyramidDrop, DART, SparseVLM): a second insertion point, inside the
language model."""

from fopru.llm_pruning.base import BoundaryInputs, Drop, LLMPruning, Recycled, rank_visual
from fopru.llm_pruning.dart import DART
from fopru.llm_pruning.fastv import FastV
from fopru.llm_pruning.none import NoLLMPruning
from fopru.llm_pruning.pyramid_drop import PyramidDrop
from fopru.llm_pruning.sparsevlm import SparseVLM
from fopru.llm_pruning.vtw import VisualTokenWithdrawal

__all__ = [
    "DART",
    "BoundaryInputs",
    "Drop",
    "FastV",
    "LLMPruning",
    "NoLLMPruning",
    "PyramidDrop",
    "Recycled",
    "SparseVLM",
    "VisualTokenWithdrawal",
    "rank_visual",
]
