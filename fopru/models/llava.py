"""LLaVA-1.5 (``llava-hf/llava-1.5-{7,13}b-hf``) and any ``LlavaForConditionalGeneration`` with a CLIP-style tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from fopru.efficiency.flops import FlopsBreakdown, llava_flops
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.base import (
    SAMPLE_KEYS,
    KeptImage,
    LanguageInputs,
    TargetModel,
    assemble_sequences,
    projector_tokens,
    prompt_text,
    prune_images,
)
from fopru.reorder.base import Positions
from fopru.significance.attention import AttentionSummary

if TYPE_CHECKING:
    from fopru.pipeline import PruningPipeline


def llava_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """LLaVA-1.5's processor around ``tokenizer``: the PIL CLIP image processor at ``image_size`` (resize the short
    side, centre crop), one ``<image>`` placeholder per patch plus one for [CLS] (dropped by the "default"
    feature selection)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """The transformer layers of a CLIP or SigLIP vision model, whichever way transformers nests them."""
    for path in ("encoder.layers", "vision_model.encoder.layers"):
        module: nn.Module | None = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise ConfigError(f"cannot find the encoder layers of {type(vision_tower).__name__}")


class LlavaAdapter(TargetModel):
    """LLaVA-1.5: CLIP ViT-L/14-336 (24 x 24 patches + [CLS]), a 2-layer MLP projector, a Llama/Vicuna LLM.

    - Significance: the attention of the vision layer that produces the features the LLM sees
      (``vision_feature_layer = -2``, i.e. ``layers[-2]``, layer 23 of 24), [CLS] present. ``tap_layer`` or the
      significance source's ``layer`` choose another one (0-based, negative from the end).
    - Pruning happens on the vision features *before* the projector (it is per token, so selection commutes with it
      and only k tokens are projected). Merging strategies (pool) average vision features before the projector.
    - The prompt's N ``<image>`` placeholders of an image are replaced by its k kept tokens; the KV cache holds
      text + k.
    - Positions (1-D RoPE): ``compact`` (``auto`` resolves to it) numbers the pruned sequence 0..L-1, as if the
      image had k tokens; ``original`` gives each kept token its unpruned offset and text after the image keeps
      its unpruned positions (a gap where pruned tokens were).
    Only ``vision_feature_select_strategy="default"`` (drop [CLS]) with one feature layer is supported.
    """

    model_class: Any = LlavaForConditionalGeneration
    processor_class: Any = LlavaProcessor

    def vision_layers(self) -> nn.ModuleList:
        return encoder_layers(self.model.model.vision_tower)

    def attention_of(self, layer: nn.Module) -> nn.Module:
        attention = layer.get_submodule("self_attn")
        return attention

    def default_tap_layer(self) -> int:
        if self.tap_layer is not None:
            return self.tap_layer
        feature_layer = self.model.config.vision_feature_layer
        # hidden_states[f] is the output of layers[f] for f < 0, of layers[f - 1] for f >= 1.
        return int(feature_layer) if feature_layer < 0 else int(feature_layer) - 1

    def grid(self) -> tuple[int, int]:
        """Patch rows x cols of one image."""
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return side, side

    def patch_view(self, batch: Mapping[str, torch.Tensor], image: int) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """Image ``image`` of a prepared batch as the vision tower sees it ((H, W, 3) uint8, after resizing and
        cropping) and its patch grid: what figures of kept patches draw on."""
        processor = self.processor.image_processor
        mean = torch.tensor(processor.image_mean)[:, None, None]
        std = torch.tensor(processor.image_std)[:, None, None]
        pixels = batch["pixel_values"][image].detach().float().cpu() * std + mean
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0), self.grid()

    def check_features(self) -> None:
        """Refuse feature settings the adapter does not handle: [CLS] kept, or several feature layers."""
        config = self.model.config
        if config.vision_feature_select_strategy != "default" or not isinstance(config.vision_feature_layer, int):
            raise ConfigError(
                f"{type(self).__name__} supports vision_feature_select_strategy='default' with one "
                f"vision_feature_layer, got {config.vision_feature_select_strategy!r} / "
                f"{config.vision_feature_layer!r}"
            )

    def encode(
        self, pixel_values: torch.Tensor, pipeline: PruningPipeline
    ) -> tuple[torch.Tensor, AttentionSummary | None]:
        """(C, n, D_vision) patch features of the layer the projector reads ([CLS] dropped) and the tap's summary."""
        self.check_features()
        with self.phase("vision"), self.tap(pipeline.attention_source, has_cls=True) as tap:
            vision = self.model.model.vision_tower(pixel_values.to(self.device, self.dtype), output_hidden_states=True)
        features = vision.hidden_states[self.model.config.vision_feature_layer][:, 1:]
        return features, tap.summary() if tap is not None else None

    def assemble(
        self, batch: Mapping[str, torch.Tensor], images: Sequence[KeptImage], positions: Positions
    ) -> LanguageInputs:
        """The processor's prompts with every image's placeholders replaced by its kept tokens."""
        attention_mask = batch["attention_mask"]
        base_positions = (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)[None]
        return assemble_sequences(
            batch["input_ids"],
            attention_mask,
            base_positions,
            self.model.config.image_token_id,
            images,
            positions,
            self.model.get_input_embeddings(),
        )

    def prefill_inputs(self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline) -> LanguageInputs:
        positions = self.resolve_positions(pipeline.reorder.positions)
        features, attention = self.encode(batch["pixel_values"], pipeline)
        layout = VisualLayout.from_grid(self.grid(), has_cls=True)
        with self.phase("pruning"):
            text = self.prompt_text(batch, pipeline, [layout.num_tokens] * features.shape[0])
            projector = self.model.model.multi_modal_projector
            keys = batch.get(SAMPLE_KEYS)
            images = prune_images(pipeline, attention, features, layout, projector, text, keys)
            return self.assemble(batch, images, positions)

    def prompt_text(
        self, batch: Mapping[str, torch.Tensor], pipeline: PruningPipeline, placeholders: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each image's prompt text embeddings for strategies that read them (``needs_text``), else ``None``."""
        if not pipeline.strategy.needs_text:
            return None
        return prompt_text(
            batch["input_ids"],
            batch["attention_mask"],
            self.model.config.image_token_id,
            placeholders,
            self.model.get_input_embeddings(),
        )

    def flops(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, pipeline: PruningPipeline
    ) -> list[FlopsBreakdown]:
        """Per sample: vision tower on its images, tap and the strategy's own products (similarities, merge),
        projector on the kept tokens (on all N for strategies that read projected tokens), LLM on the kept tokens."""
        config = self.model.config
        vision = config.vision_config
        rows, cols = self.grid()
        patches, width = rows * cols, vision.hidden_size
        # The tap multiplies the tapped layer's queries by its keys: (N + 1)^2 pairs of width d per image, and once
        # more the [CLS] query by the N + 1 keys at full width (the joint softmax, AttentionSummary.cls_joint).
        tap = 2 * (patches + 1) * (patches + 2) * width if pipeline.attention_source.reduction is not None else 0
        breakdowns = []
        for sample, visual in enumerate(inputs.visual_tokens.tolist()):
            kept = inputs.sample_images(sample)
            projected = sum(projector_tokens(pipeline.strategy, image.num_tokens, len(image.indices)) for image in kept)
            base = llava_flops(
                config, int(visual), int(inputs.text_tokens[sample]), images=len(kept), projector_tokens=projected
            )
            pruning = len(kept) * tap + sum(image.pruning_flops for image in kept)
            breakdowns.append(replace(base, pruning=float(pruning)))
        return self.with_llm_pruning(breakdowns, inputs, pipeline)
