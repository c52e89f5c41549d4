"""What flows between an adapter's stages: encoded images, kept tokens, the LLM's inputs, costs, generations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fopru.efficiency.flops import FlopsBreakdown
from fopru.layout import VisualLayout
from fopru.significance.attention import AttentionSummary

#: The entry of a prepared batch holding one sample key per image ((I,) int64, :func:`fopru.seeding.sample_key`):
#: random pruning components seed each image's draws from it (see :meth:`TargetModel.prepare`).
SAMPLE_KEYS = "sample_keys"


@dataclass(frozen=True)
class KeptImage:
    """The visual tokens one image sends to the language model.

    Attributes:
        embeddings: (k, D) language-model-width embeddings, in the order they enter the sequence ((1 + k, D) with
            ``leading_cls``).
        indices: (k,) positions of those tokens among the image's N visual tokens (a merged token's
            representative), the same order. An image pruned per crop (``PruningRequest.per_crop``) has no such
            positions: there each token's place in its crops' tower sequences ([CLS] first in each, crop-major), and
            positions are compact.
        num_tokens: N, the image's visual tokens before pruning (its placeholder count in the processor's prompt).
        pruning_flops: matrix-product FLOPs spent choosing and building these tokens (the strategy's similarities
            and the merge product; the tap and the projector are counted by the adapter).
        leading_cls: the image's [CLS] token goes first, ahead of the kept tokens (a ``keeps_cls`` strategy); it sits
            at the position of the image's first placeholder, where the tower's sequence has it. (Pruned per crop,
            ``PruningRequest.per_crop``, every crop's [CLS] goes first, until the family assembles the crops.)
        deepstack: per DeepStack level, the (k, D) features that enter the language model's early layers at these
            tokens (Qwen3-VL), selected and ordered exactly as ``embeddings``; empty for other families.
    """

    embeddings: torch.Tensor
    indices: torch.Tensor
    num_tokens: int
    pruning_flops: int = 0
    leading_cls: bool = False
    deepstack: tuple[torch.Tensor, ...] = ()

    @property
    def count(self) -> int:
        """Tokens this image sends to the language model (its kept tokens, plus [CLS] with ``leading_cls``)."""
        return int(self.embeddings.shape[0])


@dataclass(frozen=True)
class LanguageInputs:
    """A left-padded batch ready for the language model's prefill.

    Attributes:
        inputs_embeds: (B, L, D).
        attention_mask: (B, L) int64, 0 on left padding.
        position_ids: (P, B, L) int64; P = 1 for 1-D RoPE, 3 for M-RoPE (t, h, w).
        visual_tokens: (B,) int64, visual tokens per sample that reach the language model.
        images: every image's kept tokens, in batch order.
        images_per_sample: how many of ``images`` belong to each sample, in order.
        visual_mask: (B, L) bool, True where a visual token sits (in-LLM pruning drops only those); ``None`` when
            the inputs were built by hand.
        deepstack: per DeepStack level i, (B, L, D) features added to the output of language layer i at the visual
            positions (Qwen3-VL), zero elsewhere; empty for other families.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_tokens: torch.Tensor
    images: tuple[KeptImage, ...]
    images_per_sample: tuple[int, ...]
    visual_mask: torch.Tensor | None = None
    deepstack: tuple[torch.Tensor, ...] = ()

    @property
    def text_tokens(self) -> torch.Tensor:
        """(B,) int64, prompt tokens per sample that are not visual."""
        return self.attention_mask.sum(dim=1) - self.visual_tokens

    def sample_images(self, sample: int) -> tuple[KeptImage, ...]:
        """The kept tokens of every image of one sample."""
        start = sum(self.images_per_sample[:sample])
        return self.images[start : start + self.images_per_sample[sample]]

    @property
    def next_position(self) -> torch.Tensor:
        """(B,) position id of the first generated token: one past the largest prompt position."""
        masked = self.position_ids.masked_fill(self.attention_mask[None] == 0, -1)
        return masked.amax(dim=(0, 2)) + 1


@dataclass(frozen=True)
class Generation:
    """Greedy generation output.

    Attributes:
        tokens: (B, T) generated token ids, padded with the pad id after end of sequence.
        texts: decoded strings, special tokens removed.
        inputs: the prefill inputs (kept visual tokens, positions) that produced them.
        prompt_cache_length: cached positions right after prefill: the left-padded prompt length L (for one sample,
            text + kept visual tokens); with a shared image prefix, the longest prefix plus the longest remainder.
        layer_cache_lengths: cached positions of every language-model layer right after prefill (all equal to
            ``prompt_cache_length`` without in-LLM pruning; later layers hold fewer with it).
        survivors: with in-LLM pruning, one (B, L) bool mask over the prefill sequence per boundary: the prompt
            positions still present after it.
    """

    tokens: torch.Tensor
    texts: list[str]
    inputs: LanguageInputs
    prompt_cache_length: int
    layer_cache_lengths: tuple[int, ...] = ()
    survivors: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True)
class VisualGroup:
    """Encoded images that share one layout: what a family hands the shared pruning step.

    Attributes:
        features: (I, N, D) vision features of each image's N candidate tokens, in layout order.
        attention: the tapped layer's summary over the same tokens, or ``None`` when nothing reads attention.
        layout: the images' layout (grids, [CLS] present in the tower's sequence or not, merge factor).
        project: vision features to language-model-width embeddings (the identity where the encoder's output is
            already projected).
        placeholders: each image's placeholder count in the prompt (N, or more where the family adds tokens).
        finish: an image's kept tokens re-indexed into its placeholders (LLaVA-NeXT adds its row newlines, or, pruned
            per crop, arranges its crops' tokens as the strategy's released code does);
            ``None`` where kept tokens index the placeholders directly.
        cls_features: (I, 1, D) each image's [CLS] features at the same layer, for strategies that keep [CLS]
            (``PruningRequest.cls``), or (I, G, D) one per crop where each of the G grids is a crop of its own
            (``PruningRequest.per_crop``); ``None`` where the request does not ask or the family has no [CLS].
        deepstack: per DeepStack level, (I, N, D) features of the same N tokens, already in the language model's
            width (Qwen3-VL); pruning selects (or merges) them exactly as ``features``. Empty for other families.
    """

    features: torch.Tensor
    attention: AttentionSummary | None
    layout: VisualLayout
    project: Callable[[torch.Tensor], torch.Tensor]
    placeholders: int
    finish: Callable[[KeptImage], KeptImage] | None = None
    cls_features: torch.Tensor | None = None
    deepstack: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True)
class SampleCost:
    """A family's analytic FLOPs of one sample, before the pruning costs the shared skeleton adds.

    Attributes:
        breakdown: vision encoder, projector and language model on the tokens that reached it.
        tapped: the patch count of every attention call of the tapped layer (one per image, or per crop).
        has_cls: whether the tapped layer's sequence holds a [CLS] token besides those patches.
        width: the tapped layer's width.
    """

    breakdown: FlopsBreakdown
    tapped: tuple[int, ...]
    has_cls: bool
    width: int
