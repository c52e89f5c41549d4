"""The target-model contract: one adapter per LVLM family, and what all of them share.

An adapter wraps a real transformers model and its processor. It encodes images (tapping the vision layer the
significance source asks for), hands visual features to the pruning pipeline, and rebuilds the language model's
input from the kept tokens. Everything after that (the sequence assembly, positions, the greedy decode loop with a
KV cache that holds only text and kept visual tokens) is shared here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import DynamicCache

from fopru.efficiency.flops import FlopsBreakdown, with_layer_tokens
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.llm_pruning.base import trailing_text
from fopru.models.loading import checkpoint_fingerprint, resolve_checkpoint, torch_dtype
from fopru.models.staged import Segment, StagedDecoder
from fopru.models.tap import VisionAttentionTap
from fopru.reorder.base import Positions
from fopru.significance.attention import AttentionSummary
from fopru.significance.base import SignificanceSource
from fopru.strategies.base import StrategyInputs
from fopru.timing import PhaseTimer

if TYPE_CHECKING:
    from fopru.pipeline import PruningPipeline, PruningRequest

#: The entry of a prepared batch holding one sample key per image ((I,) int64, :func:`fopru.seeding.sample_key`):
#: random pruning components seed each image's draws from it (see :meth:`TargetModel.prepare`).
SAMPLE_KEYS = "sample_keys"


@dataclass(frozen=True)
class KeptImage:
    """The visual tokens one image sends to the language model.

    Attributes:
        embeddings: (k, D) language-model-width embeddings, in the order they enter the sequence.
        indices: (k,) positions of those tokens among the image's N visual tokens (a merged token's
            representative), the same order.
        num_tokens: N, the image's visual tokens before pruning (its placeholder count in the processor's prompt).
        pruning_flops: matrix-product FLOPs spent choosing and building these tokens (the strategy's similarities
            and the merge product; the tap and the projector are counted by the adapter).
    """

    embeddings: torch.Tensor
    indices: torch.Tensor
    num_tokens: int
    pruning_flops: int = 0


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
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_tokens: torch.Tensor
    images: tuple[KeptImage, ...]
    images_per_sample: tuple[int, ...]
    visual_mask: torch.Tensor | None = None

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
            text + kept visual tokens).
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
        finish: an image's kept tokens re-indexed into its placeholders (LLaVA-NeXT adds its row newlines);
            ``None`` where kept tokens index the placeholders directly.
    """

    features: torch.Tensor
    attention: AttentionSummary | None
    layout: VisualLayout
    project: Callable[[torch.Tensor], torch.Tensor]
    placeholders: int
    finish: Callable[[KeptImage], KeptImage] | None = None


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


def tap_flops(patches: int, width: int, has_cls: bool) -> int:
    """Matrix-product FLOPs the tap adds to one attention call: the tapped layer's queries times its keys over the
    whole sequence (patches, plus [CLS]), and, with [CLS], once more its query against every key at full width
    (the joint softmax, :attr:`AttentionSummary.cls_joint`)."""
    sequence = patches + int(has_cls)
    return 2 * sequence * (sequence + int(has_cls)) * width


def assemble_sequences(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    base_positions: torch.Tensor,
    image_token_id: int,
    images: Sequence[KeptImage],
    positions: Positions,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> LanguageInputs:
    """Replace every image's N placeholder tokens by its kept tokens, and give every token its position.

    Args:
        input_ids, attention_mask: the processor's (B, L_full) prompt with N placeholders per image.
        base_positions: (P, B, L_full) position ids of the unpruned prompt (LLaVA: 0.. over real tokens; Qwen:
            the model's own M-RoPE index).
        image_token_id: the placeholder id.
        images: the kept tokens of every image, in the order images appear across the batch.
        positions: ``original``: every token keeps its unpruned position (pruned columns are dropped; text after
            an image keeps its offset). ``compact``: tokens are re-indexed 0..L-1 over the pruned sequence.
            Adapters resolve ``auto`` first (:meth:`TargetModel.resolve_positions`).
        embed_tokens: the language model's input embedding.

    Samples are re-padded on the left to the longest pruned sequence.
    """
    image_iter = iter(images)
    rows: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]] = []
    images_per_sample: list[int] = []
    for sample in range(input_ids.shape[0]):
        real = attention_mask[sample].bool()
        ids = input_ids[sample, real]
        sample_positions = base_positions[:, sample, real]
        embeds = embed_tokens(ids)
        placeholders = (ids == image_token_id).nonzero().flatten().tolist()
        pieces: list[torch.Tensor] = []
        piece_positions: list[torch.Tensor] = []
        piece_visual: list[torch.Tensor] = []
        cursor = 0
        visual = 0
        images_per_sample.append(0)
        while placeholders:
            try:
                image = next(image_iter)
            except StopIteration:
                raise ConfigError(
                    f"sample {sample} has {len(placeholders)} more image placeholder tokens than the images given"
                ) from None
            start = placeholders[0]
            span = placeholders[: image.num_tokens]
            if len(span) != image.num_tokens or span[-1] - start + 1 != image.num_tokens:
                raise ConfigError(
                    f"sample {sample}: expected {image.num_tokens} consecutive placeholder tokens for an image at "
                    f"position {start}, found {len(span)}; the prompt and the images do not match"
                )
            placeholders = placeholders[image.num_tokens :]
            images_per_sample[-1] += 1
            pieces += [embeds[cursor:start], image.embeddings.to(embeds.dtype)]
            piece_positions += [sample_positions[:, cursor:start], sample_positions[:, start + image.indices]]
            piece_visual += [
                ids.new_zeros(start - cursor, dtype=torch.bool),
                ids.new_ones(image.embeddings.shape[0], dtype=torch.bool),
            ]
            visual += image.embeddings.shape[0]
            cursor = start + image.num_tokens
        pieces.append(embeds[cursor:])
        piece_positions.append(sample_positions[:, cursor:])
        piece_visual.append(ids.new_zeros(ids.shape[0] - cursor, dtype=torch.bool))
        sequence = torch.cat(pieces)
        sequence_positions = torch.cat(piece_positions, dim=1)
        if positions == "compact":
            sequence_positions = torch.arange(sequence.shape[0], device=sequence.device).expand_as(sequence_positions)
        rows.append((sequence, sequence_positions, visual, torch.cat(piece_visual)))
    if next(image_iter, None) is not None:
        raise ConfigError("more images were given than the prompts have placeholders for")
    return _left_pad(rows, tuple(images), tuple(images_per_sample))


def _left_pad(
    rows: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]],
    images: tuple[KeptImage, ...],
    images_per_sample: tuple[int, ...],
) -> LanguageInputs:
    length = max(sequence.shape[0] for sequence, _, _, _ in rows)
    batch = len(rows)
    first_sequence, first_positions, _, _ = rows[0]
    embeds = first_sequence.new_zeros((batch, length, first_sequence.shape[1]))
    mask = torch.zeros((batch, length), dtype=torch.long, device=first_sequence.device)
    position_ids = torch.ones((first_positions.shape[0], batch, length), dtype=torch.long, device=first_sequence.device)
    visual_mask = torch.zeros((batch, length), dtype=torch.bool, device=first_sequence.device)
    for sample, (sequence, sequence_positions, _, is_visual) in enumerate(rows):
        pad = length - sequence.shape[0]
        embeds[sample, pad:] = sequence
        mask[sample, pad:] = 1
        position_ids[:, sample, pad:] = sequence_positions
        visual_mask[sample, pad:] = is_visual
    visual = torch.tensor([count for _, _, count, _ in rows], device=first_sequence.device)
    return LanguageInputs(embeds, mask, position_ids, visual, images, images_per_sample, visual_mask)


class TargetModel(ABC):
    """An adapter for one LVLM family.

    Constructor arguments are config-time values; :meth:`load` builds the model and processor. The skeleton is
    shared: :meth:`prefill_inputs` (encode, prune, assemble), :meth:`flops` (the family's costs plus the tap's and
    the strategy's), the tap, the greedy decode loop and the loading. A family names the transformers classes
    (``model_class``, ``processor_class``) and implements what is its own:

    - :meth:`vision_layers`: the vision encoder's transformer layers, in order;
    - :meth:`attention_of`: the attention module of one of them (where the tap hooks in);
    - :meth:`default_tap_layer`: the layer significance comes from by default;
    - :meth:`visual_groups`: the batch's images encoded into :class:`VisualGroup` s (features, tapped attention,
      layout with its grids and [CLS], projector, placeholder count);

    and may override :meth:`base_positions` (1-D positions over real tokens by default; Qwen's M-RoPE index),
    :meth:`sample_costs` (its FLOPs accounting), :meth:`resolve_positions` and :meth:`load_processor`.

    Args:
        checkpoint: a hub id (``llava-hf/llava-1.5-7b-hf``), a local folder, or ``tiny:<name>`` for the seeded
            random test fixtures.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        attn_implementation: the kernel of every layer (``sdpa``, ``eager``, ``flash_attention_2``); the tap keeps it.
        device: where to load the model.
        tap_layer: the vision layer significance comes from (0-based, negative from the end); ``None`` for the
            family's default. A significance source's own ``layer`` wins over it.
    """

    model_class: Any
    processor_class: Any
    #: The user turn when the processor has no chat template; ``{text}`` is the benchmark's prompt.
    prompt_template: str = "USER: <image>\n{text} ASSISTANT:"
    #: A later user turn of the same conversation (training conversations), appended after ``</s>``.
    follow_up_template: str = "USER: {text} ASSISTANT:"
    #: Position modes this family supports (Qwen's M-RoPE only supports ``original``).
    position_modes: tuple[str, ...] = ("compact", "original")

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        device: str = "cpu",
        tap_layer: int | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.tap_layer = tap_layer
        self.dtype = torch_dtype(dtype)
        self.attn_implementation = attn_implementation
        self.device = device
        self._model: Any = None
        self._processor: Any = None
        #: When set, stages are timed into it: vision, pruning, prefill, decode (see :mod:`fopru.timing`).
        self.timer: PhaseTimer | None = None

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Time a stage when a timer is attached."""
        return self.timer.phase(name) if self.timer is not None else nullcontext()

    # -- loading -------------------------------------------------------------------------------------------
    def build_untrained(self, folder: Path, seed: int) -> None:
        """Save the family's untrained architecture and processor into ``folder``, for ``stage=train``."""
        raise ConfigError(
            f"{type(self).__name__} ({self.checkpoint}) cannot be trained from scratch: stage=train needs a model "
            "whose untrained architecture the framework builds, such as model=mini_llava"
        )

    def load(self) -> TargetModel:
        """Load model and processor (once)."""
        if self._model is None:
            path = resolve_checkpoint(self.checkpoint)
            self._model = self.model_class.from_pretrained(
                path, dtype=self.dtype, attn_implementation=self.attn_implementation
            ).to(self.device)
            self._model.eval()
            self._processor = self.load_processor(path)
        return self

    def fingerprint(self) -> str:
        """What identifies this checkpoint's weights and processor files (:func:`checkpoint_fingerprint`): a content
        digest for a folder (cached, so a large checkpoint is hashed once), the commit for a hub checkpoint."""
        return checkpoint_fingerprint(resolve_checkpoint(self.checkpoint))

    def load_processor(self, path: str) -> Any:
        """The processor saved with the checkpoint; families override this for processor workarounds."""
        return self.processor_class.from_pretrained(path)

    @property
    def model(self) -> Any:
        """The transformers model (loads on first use)."""
        return self.load()._model

    @property
    def processor(self) -> Any:
        """The transformers processor (loads on first use)."""
        return self.load()._processor

    # -- family-specific -----------------------------------------------------------------------------------
    @abstractmethod
    def vision_layers(self) -> nn.ModuleList:
        """The vision encoder's transformer layers, in order."""

    @abstractmethod
    def attention_of(self, layer: nn.Module) -> nn.Module:
        """The attention module of one vision layer."""

    @abstractmethod
    def default_tap_layer(self) -> int:
        """Index (0-based) of the vision layer whose attention significance comes from by default."""

    @abstractmethod
    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """The batch's images, encoded (tapping what ``request`` asks for), as groups of same-layout images in the
        order images appear across the batch."""

    def base_positions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(P, B, L) position ids of the processor's unpruned prompt: 0.. over each sample's real tokens (1-D RoPE);
        families with their own position index (M-RoPE) override it."""
        attention_mask = batch["attention_mask"]
        return (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)[None]

    def prefill_inputs(self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline) -> LanguageInputs:
        """Encode the batch's images, prune their tokens with ``pipeline`` and assemble the LLM's prompt."""
        request = pipeline.request
        positions = self.resolve_positions(request.positions)
        groups = self.visual_groups(batch, request)
        with self.phase("pruning"):
            placeholders = [group.placeholders for group in groups for _ in range(group.features.shape[0])]
            text = self.prompt_text(batch, placeholders) if request.text else None
            all_keys = batch.get(SAMPLE_KEYS)
            images: list[KeptImage] = []
            first = 0
            for group in groups:
                part = slice(first, first + group.features.shape[0])
                first = part.stop
                kept = prune_images(
                    pipeline,
                    group.attention,
                    group.features,
                    group.layout,
                    group.project,
                    None if text is None else (text[0][part], text[1][part]),
                    None if all_keys is None else all_keys[part],
                )
                images += kept if group.finish is None else [group.finish(image) for image in kept]
            with torch.no_grad():
                base_positions = self.base_positions(batch)
            return assemble_sequences(
                batch["input_ids"],
                batch["attention_mask"],
                base_positions,
                int(self.model.config.image_token_id),
                images,
                positions,
                self.model.get_input_embeddings(),
            )

    def prompt_text(
        self, batch: Mapping[str, torch.Tensor], placeholders: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's prompt text embeddings, for strategies that read them (:func:`prompt_text`)."""
        return prompt_text(
            batch["input_ids"],
            batch["attention_mask"],
            int(self.model.config.image_token_id),
            placeholders,
            self.model.get_input_embeddings(),
        )

    def patch_view(self, batch: Mapping[str, torch.Tensor], image: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """Image ``image`` of a prepared batch as the vision encoder sees it ((H, W, 3) uint8) and the patch grid its
        visual tokens index (row-major), for figures of kept patches; ``None`` for families without a single grid."""
        return None

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """The family's FLOPs of each sample of a prefilled batch (:mod:`fopru.efficiency`), from the token counts
        that actually reached the LLM; the default says which family lacks them."""
        raise ConfigError(f"{type(self).__name__} has no FLOPs accounting yet")

    def flops(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, pipeline: PruningPipeline
    ) -> list[FlopsBreakdown]:
        """Analytic FLOPs of each sample of a prefilled batch: the family's costs (:meth:`sample_costs`), the tap
        (:func:`tap_flops` per tapped attention call) and the strategy's own products, the in-LLM method's."""
        request = pipeline.request
        breakdowns = []
        for sample, cost in enumerate(self.sample_costs(batch, inputs, request)):
            tapped = request.reduction is not None
            tap = sum(tap_flops(patches, cost.width, cost.has_cls) for patches in cost.tapped) if tapped else 0
            strategy = sum(image.pruning_flops for image in inputs.sample_images(sample))
            breakdowns.append(replace(cost.breakdown, pruning=float(tap + strategy)))
        return self.with_llm_pruning(breakdowns, inputs, pipeline)

    def with_llm_pruning(
        self, breakdowns: list[FlopsBreakdown], inputs: LanguageInputs, pipeline: PruningPipeline
    ) -> list[FlopsBreakdown]:
        """The families' breakdowns with the language model recounted layer by layer for ``pipeline.llm_pruning``
        (unchanged FLOPs without it), and the mean and pre-LLM-equivalent visual tokens filled in."""
        method = pipeline.llm_pruning
        config = self.model.config
        depth = int(config.get_text_config().num_hidden_layers)
        text_config = config.get_text_config()
        trailing = [0] * len(breakdowns)
        if method.selects and inputs.visual_mask is not None:
            trailing = trailing_text(inputs.visual_mask, inputs.attention_mask.bool()).sum(dim=1).tolist()
        result = []
        for sample, breakdown in enumerate(breakdowns):
            visual, text = int(inputs.visual_tokens[sample]), int(inputs.text_tokens[sample])
            per_layer = method.visual_per_layer(visual, depth, pipeline.budget)
            ranking = 0
            if method.selects and visual:
                ranking += method.prepare_flops(text_config, visual, trailing[sample])
            for number, drop in enumerate(method.schedule(visual, depth, pipeline.budget)):
                before = per_layer[drop.layer - 1]
                if 0 < min(drop.kept, before) < before:  # the generation ranks only when some but not all survive
                    ranking += method.boundary_flops(text_config, number, text + before, before, trailing[sample])
            result.append(with_layer_tokens(breakdown, config, per_layer, text, method_flops=ranking))
        return result

    # -- shared --------------------------------------------------------------------------------------------
    def check_positions(self, positions: str) -> None:
        """Refuse a position mode this family cannot honour (``auto`` is always fine)."""
        self.resolve_positions(positions)

    def resolve_positions(self, positions: str) -> Positions:
        """The position mode to use: ``auto`` becomes the family's natural mode (the first of ``position_modes``)."""
        if positions == "auto":
            positions = self.position_modes[0]
        if positions not in self.position_modes:
            raise ConfigError(
                f"{type(self).__name__} supports reorder.positions in {['auto', *self.position_modes]}, "
                f"got {positions!r}"
            )
        return positions  # type: ignore[return-value]

    def tap_index(self, source: PruningRequest | SignificanceSource) -> int:
        """The vision layer to tap: ``source.layer`` (Python-style index), else the family default."""
        count = len(self.vision_layers())
        index = self.default_tap_layer() if source.layer is None else source.layer
        if not -count <= index < count:
            raise ConfigError(f"significance.layer={index} is outside the vision encoder's {count} layers")
        return index % count

    def tap(
        self, source: PruningRequest | SignificanceSource, has_cls: bool
    ) -> AbstractContextManager[VisionAttentionTap | None]:
        """A tap on the layer ``source`` names (a request, or a significance source), or a no-op when it reads no
        attention (``reduction`` is ``None``)."""
        if source.reduction is None:
            return nullcontext()
        layer = self.vision_layers()[self.tap_index(source)]
        return VisionAttentionTap(self.attention_of(layer), source.reduction, has_cls)

    def format_prompt(self, text: str) -> str:
        """One image and ``text`` as a user turn, ready for generation: the processor's chat template if it has
        one (real checkpoints), else :attr:`prompt_template`."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt: str = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
            return prompt
        return self.prompt_template.format(text=text)

    def prepare(
        self, images: Sequence[Any], prompts: Sequence[str], sample_keys: Sequence[int] | None = None
    ) -> Mapping[str, torch.Tensor]:
        """Run the processor on images and prompts (one ``<image>`` per image in the prompt), left-padded.

        ``sample_keys``, one per image (the key of the sample it belongs to), go into the batch as
        :data:`SAMPLE_KEYS`, so that random pruning draws per sample, not per batch position.
        """
        batch = self.processor(images=list(images), text=list(prompts), padding=True, return_tensors="pt")
        prepared = {key: value.to(self.device) for key, value in batch.items()}
        if sample_keys is not None:
            if len(sample_keys) != len(images):
                raise ValueError(f"{len(images)} images but {len(sample_keys)} sample keys: give one key per image")
            prepared[SAMPLE_KEYS] = torch.tensor(list(sample_keys), dtype=torch.long)
        return prepared

    def language_forward(
        self,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: DynamicCache,
        inputs_embeds: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Language model forward on embeddings or ids with explicit positions; returns logits."""
        positions = position_ids[0] if position_ids.shape[0] == 1 else position_ids
        output = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        logits: torch.Tensor = output.logits
        return logits

    def prefill_logits(self, inputs: LanguageInputs) -> torch.Tensor:
        """(B, L, V) logits of the whole prompt."""
        with torch.no_grad():
            return self.language_forward(
                inputs.position_ids, inputs.attention_mask, DynamicCache(), inputs_embeds=inputs.inputs_embeds
            )

    def staged_decoder(self) -> StagedDecoder:
        """The language model as decoder layers and lm_head, for in-LLM pruning (every family nests it the same)."""
        return StagedDecoder(self.model.model.language_model, self.model.lm_head)

    def generate(
        self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline, max_new_tokens: int = 16
    ) -> Generation:
        """Greedy decoding after pruning; the KV cache holds only text and kept visual tokens.

        With an in-LLM method (``pipeline.llm_pruning``), the language model runs segment by segment
        (:class:`~fopru.models.staged.StagedDecoder`): visual tokens leave the sequence at its boundaries and the
        cache of every later layer holds only the survivors. Without one, the stock forward runs.
        """
        self.check_positions(pipeline.request.positions)
        tokenizer = self.processor.tokenizer
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        staged = self.staged_decoder() if pipeline.llm_pruning.active else None
        segments: list[Segment] = []
        with torch.no_grad():
            inputs = self.prefill_inputs(batch, pipeline)
            cache = DynamicCache()
            with self.phase("prefill"):
                if staged is None:
                    logits = self.language_forward(
                        inputs.position_ids,
                        inputs.attention_mask,
                        cache,
                        inputs_embeds=inputs.inputs_embeds,
                        logits_to_keep=1,
                    )
                else:
                    if inputs.visual_mask is None:
                        raise ConfigError("in-LLM pruning needs the inputs' visual_mask (built by assemble_sequences)")
                    schedules = [
                        pipeline.llm_pruning.schedule(int(visual), staged.depth, pipeline.budget)
                        for visual in inputs.visual_tokens.tolist()
                    ]
                    logits, segments = staged.prefill(
                        inputs.inputs_embeds,
                        inputs.attention_mask,
                        inputs.position_ids,
                        inputs.visual_mask,
                        schedules,
                        cache,
                        ranking=pipeline.llm_pruning.ranking,
                        renumber=pipeline.llm_pruning.renumber,
                        method=pipeline.llm_pruning,
                    )
            prompt_cache_length = cache.get_seq_length()
            layer_cache_lengths = tuple(cache.get_seq_length(layer) for layer in range(len(cache.layers)))
            token = logits[:, -1].argmax(dim=-1)
            finished = token == eos
            generated = [token]
            mask = inputs.attention_mask
            position = inputs.next_position
            for _ in range(max_new_tokens - 1):
                if bool(finished.all()):
                    break
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                step_positions = position[None, :, None].expand(inputs.position_ids.shape[0], -1, 1)
                with self.phase("decode"):
                    if staged is None:
                        logits = self.language_forward(step_positions, mask, cache, input_ids=token[:, None])
                    else:
                        logits = staged.decode(token[:, None], step_positions, segments, cache)
                position = position + 1
                token = logits[:, -1].argmax(dim=-1).masked_fill(finished, pad)
                finished = finished | (token == eos)
                generated.append(token)
        tokens = torch.stack(generated, dim=1)
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        survivors = tuple(_survivors(segment, inputs.attention_mask.shape[1]) for segment in segments[1:])
        return Generation(
            tokens, [text.strip() for text in texts], inputs, prompt_cache_length, layer_cache_lengths, survivors
        )


def _survivors(segment: Segment, length: int) -> torch.Tensor:
    """(B, length) bool: the prefill positions a segment holds."""
    index = segment.prompt_index
    present = torch.zeros((index.shape[0], length + 1), dtype=torch.bool, device=index.device)
    present.scatter_(1, index.masked_fill(index < 0, length), True)
    return present[:, :length]


def prune_images(
    pipeline: PruningPipeline,
    attention: AttentionSummary | None,
    features: torch.Tensor,
    layout: VisualLayout,
    project: Callable[[torch.Tensor], torch.Tensor],
    text: tuple[torch.Tensor, torch.Tensor] | None = None,
    sample_keys: torch.Tensor | None = None,
) -> list[KeptImage]:
    """Prune (I, N, D) same-layout image features and project the kept ones: one :class:`KeptImage` per image.

    ``text`` is each image's prompt text, (I, T, D_llm) embeddings and their (I, T) mask, for strategies that read
    it (``request.text``); ``sample_keys`` (I,) the images' entries of the batch's :data:`SAMPLE_KEYS`, if any. For
    strategies that read the projected tokens (``request.projected``) all N tokens are projected once and a pure
    selection takes its tokens from them (no second projection). An adaptive strategy's images keep different
    counts: each :class:`KeptImage` holds its own.
    """
    request = pipeline.request
    projected = project(features) if request.projected else None
    inputs = StrategyInputs(
        projected=projected,
        text=text[0] if text is not None and request.text else None,
        text_mask=text[1] if text is not None and request.text else None,
        sample_keys=sample_keys,
    )
    selection = pipeline.prune(attention, features, layout, inputs).selection
    if projected is not None and selection.weights is None:
        embeddings = selection.gather(projected)
    else:
        embeddings = project(selection.gather(features))
    counts = selection.kept_per_sample.tolist()
    # The merge product weights @ features: (k x N) @ (N x D) per image.
    merge = 2 * layout.num_tokens * features.shape[-1] if selection.weights is not None else 0
    return [
        KeptImage(
            embeddings[image, :count],
            selection.indices[image, :count],
            layout.num_tokens,
            selection.flops + merge * count,
        )
        for image, count in enumerate(counts)
    ]


def projector_tokens(request: PruningRequest, num_tokens: int, kept: int) -> int:
    """Tokens one image sends through a per-token projector under :func:`prune_images`: the ``kept`` selected
    ones, or all ``num_tokens`` once for strategies that read projected tokens (plus the merged ones if such a
    strategy also merges)."""
    if not request.projected:
        return kept
    return num_tokens + (kept if request.merges else 0)


def prompt_text(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    placeholders: Sequence[int],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's prompt text in the language model's input space, for text-guided strategies.

    Args:
        input_ids, attention_mask: the processor's (B, L) prompts.
        image_token_id: the image placeholder id.
        placeholders: every image's placeholder count, in the order images appear across the batch (how images
            are matched to samples).
        embed_tokens: the language model's input embedding.

    Returns:
        (I, T, D) embeddings of the real non-placeholder tokens of each image's sample (right-padded with zeros)
        and their (I, T) bool mask.
    """
    texts: list[torch.Tensor] = []
    image = 0
    for sample in range(input_ids.shape[0]):
        ids = input_ids[sample, attention_mask[sample].bool()]
        is_image = ids == image_token_id
        remaining = int(is_image.sum())
        embedded = embed_tokens(ids[~is_image])
        while remaining > 0:
            if image >= len(placeholders):
                raise ConfigError(f"sample {sample} has more image placeholders than the images given")
            remaining -= placeholders[image]
            texts.append(embedded)
            image += 1
    if image != len(placeholders):
        raise ConfigError(f"{len(placeholders)} images were given but the prompts hold placeholders for {image}")
    if not texts:
        raise ConfigError("text-guided pruning needs at least one image in the batch")
    length = max(1, *(text.shape[0] for text in texts))
    width = texts[0].shape[-1]
    embeddings = torch.zeros((len(texts), length, width), dtype=torch.float32, device=input_ids.device)
    mask = torch.zeros((len(texts), length), dtype=torch.bool, device=input_ids.device)
    for row, text in enumerate(texts):
        embeddings[row, : text.shape[0]] = text.float()
        mask[row, : text.shape[0]] = True
    return embeddings, mask
