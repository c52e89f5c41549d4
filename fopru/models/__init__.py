"""Model-side code: adapters per model family and the vision-encoder attention tap."""

from fopru.models.tap import VisionAttentionTap

__all__ = ["VisionAttentionTap"]
