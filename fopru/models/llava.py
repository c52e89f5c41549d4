"""LLaVA-1.5 (``llava-hf/llava-1.5-{7,13}b-hf``) and any ``LlavaForConditionalGeneration`` with a CLIP-style tower."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from fopru.efficiency.flops import llava_flops
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.base import TargetModel, check_feature_selection
from fopru.models.inputs import LanguageInputs, SampleCost, VisualGroup
from fopru.models.pruning import projector_tokens
from fopru.significance.attention import AttentionSummary

if TYPE_CHECKING:
    from fopru.pipeline import PruningRequest


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
    groups_images = True

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

    def feature_layer(self) -> int:
        """The layer whose output the projector reads (``vision_feature_layer``, 0-based): the tower stops there."""
        feature_layer = int(self.model.config.vision_feature_layer)
        return feature_layer + self.vision_depth() if feature_layer < 0 else feature_layer - 1

    def visual_tokens_per_image(self) -> int | None:
        vision = self.config().vision_config
        return int((vision.image_size // vision.patch_size) ** 2)

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
        check_feature_selection(self.model.config, "default", type(self).__name__)

    def image_layout(self) -> VisualLayout:
        """One image's candidate tokens: its patch grid, after the [CLS] token CLIP towers prepend (the "default"
        feature selection drops it from the features; it stays in the tapped attention)."""
        return VisualLayout.from_grid(self.grid(), has_cls=True)

    def encode(
        self, pixel_values: torch.Tensor, request: PruningRequest, layout: VisualLayout
    ) -> tuple[torch.Tensor, AttentionSummary | None]:
        """(C, n, D_vision) patch features of the layer the projector reads ([CLS] dropped) and the tap's summary."""
        sequence, attention = self.encode_sequence(pixel_values, request, layout)
        return sequence[:, int(layout.has_cls) :], attention

    def encode_sequence(
        self, pixel_values: torch.Tensor, request: PruningRequest, layout: VisualLayout
    ) -> tuple[torch.Tensor, AttentionSummary | None]:
        """(C, int(has_cls) + n, D_vision) the whole sequence of the layer the projector reads, [CLS] first where the
        tower has one, and the tap's summary."""
        self.check_features()
        with self.phase("vision"), self.tap(request, has_cls=layout.has_cls) as tap:
            vision = self.model.model.vision_tower(pixel_values.to(self.device, self.dtype), output_hidden_states=True)
        # By absolute index (hidden_states[0] is the embeddings): the tower may stop at the feature layer.
        return vision.hidden_states[self.feature_layer() + 1], tap.summary() if tap is not None else None

    def visual_groups(self, batch: Mapping[str, torch.Tensor], request: PruningRequest) -> list[VisualGroup]:
        """Every image has the same grid: one group, pruned at once, projected by the MLP projector. [CLS] is handed
        over for strategies that keep it (``request.cls``)."""
        layout = self.image_layout()
        sequence, attention = self.encode_sequence(batch["pixel_values"], request, layout)
        features = sequence[:, int(layout.has_cls) :]
        cls = sequence[:, :1] if request.cls and layout.has_cls else None
        projector = self.model.model.multi_modal_projector
        return [VisualGroup(features, attention, layout, projector, layout.num_tokens, cls_features=cls)]

    def sample_costs(
        self, batch: Mapping[str, torch.Tensor], inputs: LanguageInputs, request: PruningRequest
    ) -> list[SampleCost]:
        """Per sample: vision tower on its images, projector on the kept tokens (on all N for strategies that read
        projected tokens), LLM on the kept tokens; the tap runs once per image."""
        config = self.config_as_run(request)  # the vision layers that actually run
        layout = self.image_layout()
        costs = []
        for sample, visual in enumerate(inputs.visual_tokens.tolist()):
            kept = inputs.sample_images(sample)
            projected = sum(
                projector_tokens(request, image.num_tokens, image.count, image.leading_cls) for image in kept
            )
            base = llava_flops(
                config, int(visual), int(inputs.text_tokens[sample]), images=len(kept), projector_tokens=projected
            )
            tapped = (layout.num_tokens,) * len(kept)
            costs.append(SampleCost(base, tapped, layout.has_cls, config.vision_config.hidden_size))
        return costs
