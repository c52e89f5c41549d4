"""Token significance: how much each visual token is worth keeping."""

from fopru.significance.attention import (
    AttentionReduction,
    AttentionSummary,
    summarize_attention,
    summarize_query_key,
)
from fopru.significance.base import SignificanceSource
from fopru.significance.pooling import pool_merged
from fopru.significance.sources import (
    AttentionSignificance,
    ClsSignificance,
    FocalSignificance,
    NormSignificance,
    RandomSignificance,
    UniformSignificance,
    choose_by_variance,
)

__all__ = [
    "AttentionReduction",
    "AttentionSignificance",
    "AttentionSummary",
    "ClsSignificance",
    "FocalSignificance",
    "NormSignificance",
    "RandomSignificance",
    "SignificanceSource",
    "UniformSignificance",
    "choose_by_variance",
    "pool_merged",
    "summarize_attention",
    "summarize_query_key",
]
