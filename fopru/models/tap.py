"""Tapping one vision-encoder layer's attention without slowing the encoder down.

Every attention module of transformers' vision towers (CLIP, SigLIP, Qwen2-VL, Qwen2.5-VL) looks its kernel up
in ``ALL_ATTENTION_FUNCTIONS`` by ``self.config._attn_implementation``. The tap gives the one tapped module a
private copy of its config naming ``fopru_tap``, a function registered through transformers' AttentionInterface
that runs the module's own kernel (SDPA, FlashAttention or eager) unchanged and, next to it, reduces that layer's
queries and keys (already projected and rotated) to an :class:`AttentionSummary` block by block. Every other layer
keeps its kernel, no projection is recomputed and the B x H x T x T matrix is never held at once.
"""

from __future__ import annotations

import copy
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Self

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from fopru.errors import ConfigError
from fopru.significance.attention import AttentionReduction, AttentionSummary, summarize_query_key


def _probed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    probe: AttentionProbe = getattr(module, "_fopru_probe")  # noqa: B009 - nn.Module's __getattr__ is typed for tensors
    if not probe.runs_kernel:
        probe.record(query, key, kwargs.get("scaling"), attention_mask)
        raise ProbeRecorded
    output = probe.kernel(module, query, key, value, attention_mask, **kwargs)
    probe.record(query, key, kwargs.get("scaling"), attention_mask)
    return output


class ProbeRecorded(Exception):
    """Raised by a probe that only scores (``runs_kernel = False``) once it has recorded, so that the module's
    forward stops before its kernel and output projection; the caller catches it."""


class AttentionProbe(ABC):
    """Context manager that runs one attention module through a function registered (as :attr:`implementation`)
    with transformers' AttentionInterface: it calls the module's own kernel unchanged, then hands that call's
    queries and keys to :meth:`record`. Only this module's config copy names the function; every other module
    keeps its kernel. Subclasses say what to record; :meth:`reset` clears it when a ``with`` block starts.
    """

    implementation: ClassVar[str]
    #: False: record the queries and keys, then stop the module's forward (:class:`ProbeRecorded`), its kernel unrun.
    runs_kernel: ClassVar[bool] = True

    def __init__(self, attention: nn.Module) -> None:
        config = getattr(attention, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            raise ConfigError(
                f"{type(attention).__name__} has no transformers config; probe the layer's attention module"
            )
        self.attention = attention
        self.kernel = self._module_kernel(attention, config._attn_implementation)
        self._original_config: Any = None

    @staticmethod
    def _module_kernel(attention: nn.Module, implementation: str | None) -> Callable[..., Any]:
        """The function the module would call itself: its modeling file's eager, or a registered kernel."""
        eager: Callable[..., Any] | None = getattr(
            sys.modules[type(attention).__module__], "eager_attention_forward", None
        )
        if eager is None:
            raise ConfigError(f"cannot find the eager attention of {type(attention).__name__}")
        if implementation in (None, "eager"):
            return eager
        kernel: Callable[..., Any] = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)
        return kernel

    @abstractmethod
    def reset(self) -> None:
        """Forget what earlier ``with`` blocks recorded."""

    @abstractmethod
    def record(
        self, query: torch.Tensor, key: torch.Tensor, scaling: float | None, attention_mask: torch.Tensor | None
    ) -> None:
        """Take one call's (B, H, q, d) queries and (B, K, k, d) keys (projected and rotated)."""

    def __enter__(self) -> Self:
        if self.implementation not in ALL_ATTENTION_FUNCTIONS:
            AttentionInterface.register(self.implementation, _probed_attention)
        self.reset()
        self._original_config = self.attention.config
        probed_config = copy.copy(self._original_config)
        probed_config._attn_implementation = self.implementation
        self.attention.config = probed_config
        setattr(self.attention, "_fopru_probe", self)  # noqa: B010 - a plain attribute, not a submodule
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.attention.config = self._original_config
        del self.attention._fopru_probe


class VisionAttentionTap(AttentionProbe):
    """Context manager that records an :class:`AttentionSummary` of one attention module per forward call.

    Args:
        attention: the attention module of the tapped layer (``encoder.layers[i].self_attn`` for CLIP/SigLIP,
            ``visual.blocks[i].attn`` for Qwen2-VL).
        reduction: how scores are formed (probabilities or logits, when [CLS] is dropped).
        has_cls: whether position 0 of each sequence is a [CLS] token.

    Each call of the module appends one summary (Qwen's vision tower calls once per image); :meth:`summary`
    concatenates them along the batch dimension. Nothing is kept between ``with`` blocks.
    """

    implementation = "fopru_tap"

    def __init__(self, attention: nn.Module, reduction: AttentionReduction, has_cls: bool) -> None:
        super().__init__(attention)
        self.reduction = reduction
        self.has_cls = has_cls
        self.summaries: list[AttentionSummary] = []

    def reset(self) -> None:
        self.summaries = []

    def record(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float | None,
        attention_mask: torch.Tensor | None,
    ) -> None:
        """Summarise one call's (B, H, T, D) queries and keys."""
        if attention_mask is not None:
            raise ConfigError(
                "the tapped vision layer received an attention mask (padded images); the tap supports unmasked "
                "vision encoders only"
            )
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        with torch.no_grad():
            summary = summarize_query_key(query, key, scaling, has_cls=self.has_cls, reduction=self.reduction)
            # The patches' keys, heads concatenated: strategies that merge by key similarity read them.
            first = 1 if self.has_cls else 0
            keys = key[:, :, first:].transpose(1, 2).flatten(2).float()
            self.summaries.append(replace(summary, keys=keys, key_heads=key.shape[1]))

    def summary(self) -> AttentionSummary:
        """All recorded calls, concatenated along the batch dimension."""
        if not self.summaries:
            raise RuntimeError("the tapped layer did not run; was the model called inside the `with` block?")
        if len(self.summaries) == 1:
            return self.summaries[0]
        cls_rows = [part.cls for part in self.summaries]
        joint_rows = [part.cls_joint for part in self.summaries]
        key_rows = [part.keys for part in self.summaries]
        same_width = len({row.shape[1] for row in key_rows if row is not None}) == 1
        return AttentionSummary(
            received=torch.cat([part.received for part in self.summaries]),
            paid=torch.cat([part.paid for part in self.summaries]),
            cls=None if any(row is None for row in cls_rows) else torch.cat(cls_rows),  # type: ignore[arg-type]
            keys=torch.cat(key_rows) if same_width and all(row is not None for row in key_rows) else None,  # type: ignore[arg-type]
            key_heads=self.summaries[0].key_heads,
            cls_joint=None if any(row is None for row in joint_rows) else torch.cat(joint_rows),  # type: ignore[arg-type]
        )
