"""In-LLM visual-token pruning (FastV, VTW, PyramidDrop): a second insertion point, inside the language model."""

from fopru.llm_pruning.base import Drop, LLMPruning, rank_visual
from fopru.llm_pruning.fastv import FastV
from fopru.llm_pruning.none import NoLLMPruning
from fopru.llm_pruning.pyramid_drop import PyramidDrop
from fopru.llm_pruning.vtw import VisualTokenWithdrawal

__all__ = ["Drop", "FastV", "LLMPruning", "NoLLMPruning", "PyramidDrop", "VisualTokenWithdrawal", "rank_visual"]
