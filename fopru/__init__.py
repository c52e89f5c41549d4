"""fopru: training-free visual-token pruning for vision-language models."""

from fopru.api import focal_significance, select_tokens
from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout

__all__ = ["Budget", "ConfigError", "VisualLayout", "focal_significance", "select_tokens"]
