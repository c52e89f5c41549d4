"""Analytic FLOPs of a vision-language model's inference, component by component.

The counting convention is that of ``torch.utils.flop_counter.FlopCounterMode``, so a formula here can be checked
against a counted forward pass:

- only matrix products count (linear layers, convolutions, attention's two products); one multiply-add is 2 FLOPs;
  biases, norms, activations, softmax, rotary embeddings and residual additions count 0;
- attention counts every query-key pair of the score matrix it is given: the counter's SDPA formula ignores
  ``is_causal`` and masks, and eager attention multiplies the full matrix before masking it, so causal prefill
  attention over L tokens costs the full L x L, not half of it. Sliding-window masks are not discounted either.

Symbols used in the docstrings: n tokens, d hidden size, m MLP intermediate size, H query heads, K key/value heads,
h head dim, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaOnevisionConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLVisionConfig,
    Qwen2VLConfig,
    Qwen2VLVisionConfig,
    Qwen3VLConfig,
    Qwen3VLVisionConfig,
    SiglipVisionConfig,
)

from fopru.errors import ConfigError

GridTHW = Sequence[Sequence[int]] | torch.Tensor
QwenVisionConfig = Qwen2VLVisionConfig | Qwen2_5_VLVisionConfig | Qwen3VLVisionConfig
VisionConfig = CLIPVisionConfig | SiglipVisionConfig | QwenVisionConfig
LlavaLikeConfig = LlavaConfig | LlavaNextConfig | LlavaOnevisionConfig
QwenVLConfig = Qwen2VLConfig | Qwen2_5_VLConfig | Qwen3VLConfig


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs of one request (batch of one prompt), split where pruning changes them.

    Attributes:
        vision: the vision tower on all images (for Qwen2-VL/2.5-VL including the patch merger).
        projector: the vision-to-text projector (LLaVA); 0 for Qwen2-VL, whose merger is counted in ``vision``.
        prefill: the language model on the whole prompt, visual tokens kept plus text tokens.
        decode_per_token: the first decode step, one token attending to the prompt and itself.
        decode_growth: what every further decode step adds, because the KV cache holds one more key.
        pruning: choosing and building the kept tokens: the tap's extra query-key product on the tapped vision
            layer (0 for sources that read no attention) plus, for merging strategies, the merge product, plus for
            in-LLM pruning the last query's product with the keys at every ranking layer.
        visual_tokens_mean: visual tokens per language-model layer, averaged over the layers (equal to the visual
            tokens that reached the LLM unless in-LLM pruning drops some after a layer); ``None`` if not computed.
        visual_tokens_equivalent: the visual-token count with which a pre-LLM method (every layer seeing the same
            tokens) would cost the same prefill FLOPs: the budget to compare in-LLM methods with pre-LLM ones.
    """

    vision: float
    projector: float
    prefill: float
    decode_per_token: float
    decode_growth: float = 0.0
    pruning: float = 0.0
    visual_tokens_mean: float | None = None
    visual_tokens_equivalent: float | None = None

    def total(self, new_tokens: int = 1) -> float:
        """FLOPs to generate ``new_tokens`` tokens: the first comes from the prefill logits, each later one from a
        decode step, as in ``generate``."""
        if new_tokens < 1:
            raise ConfigError(f"new_tokens must be >= 1, got new_tokens={new_tokens}")
        steps = new_tokens - 1
        decode = steps * self.decode_per_token + self.decode_growth * (steps * (steps - 1) / 2)
        return self.vision + self.pruning + self.projector + self.prefill + decode


@dataclass(frozen=True)
class _DecoderShape:
    """The sizes of a Llama-style decoder (Llama, Mistral, Qwen2, Qwen2-VL's language model) that FLOPs depend on."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> _DecoderShape:
        text = config.get_text_config()
        try:
            heads = int(text.num_attention_heads)
            hidden = int(text.hidden_size)
            return cls(
                layers=int(text.num_hidden_layers),
                hidden=hidden,
                heads=heads,
                kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
                intermediate=int(text.intermediate_size),
                vocab=int(text.vocab_size),
            )
        except AttributeError as error:
            raise ConfigError(
                f"{type(text).__name__} is not a Llama-style decoder config (Llama, Mistral, Qwen2, Qwen2-VL text): "
                f"{error}"
            ) from error

    def layer(self, tokens: int, keys: int) -> int:
        """One layer: ``tokens`` new positions, each attending to ``keys`` positions.

        q and o projections 2 * 2nd(Hh), k and v 2 * 2nd(Kh), attention 2 * 2 n keys Hh (QK^T and PV, GQA heads
        broadcast to H), SwiGLU MLP 3 * 2ndm.
        """
        projections = 4 * tokens * self.hidden * self.head_dim * (self.heads + self.kv_heads)
        attention = 4 * tokens * keys * self.heads * self.head_dim
        mlp = 6 * tokens * self.hidden * self.intermediate
        return projections + attention + mlp

    def forward(self, tokens: int, keys: int, logits: int) -> int:
        """Every layer on ``tokens`` new positions attending to ``keys``, then lm_head (2dV) on ``logits`` of them."""
        return self.layers * self.layer(tokens, keys) + 2 * logits * self.hidden * self.vocab


def _encoder_layer(tokens: int, pairs: int, hidden: int, intermediate: int, gated: bool) -> int:
    """One pre-norm ViT block on ``tokens`` tokens whose attention covers ``pairs`` query-key pairs.

    q, k, v, o projections 8nd^2, attention 4 * pairs * d, MLP 4ndm (two matrices) or 6ndm (gated, three).
    """
    mlp_matrices = 3 if gated else 2
    return 8 * tokens * hidden**2 + 4 * pairs * hidden + 2 * mlp_matrices * tokens * hidden * intermediate


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {name}={value!r}")
    return int(value)


def square_size(name: str, value: int | Sequence[int] | None) -> int:
    """A square size given as an int or an (h, w) pair with h == w, as vision configs allow."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Sequence) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ConfigError(f"{name} must be an int (or a square pair), got {name}={value!r}")


def _vit_patches(config: CLIPVisionConfig | SiglipVisionConfig) -> int:
    return (square_size("image_size", config.image_size) // square_size("patch_size", config.patch_size)) ** 2


def _wrong_vision(config: PretrainedConfig, vision: object, expected: str) -> ConfigError:
    return ConfigError(f"{type(config).__name__}.vision_config is {type(vision).__name__}, expected {expected}")


def _vit_config(config: LlavaLikeConfig) -> CLIPVisionConfig | SiglipVisionConfig:
    vision = config.vision_config
    if not isinstance(vision, CLIPVisionConfig | SiglipVisionConfig):
        raise _wrong_vision(config, vision, "CLIPVisionConfig or SiglipVisionConfig")
    return vision


def _qwen_vision_config(config: QwenVLConfig) -> QwenVisionConfig:
    vision = config.vision_config
    if not isinstance(vision, QwenVisionConfig):
        raise _wrong_vision(config, vision, "Qwen2VLVisionConfig, Qwen2_5_VLVisionConfig or Qwen3VLVisionConfig")
    return vision


def _vit_flops(config: CLIPVisionConfig | SiglipVisionConfig, images: int) -> int:
    """CLIP / SigLIP: patch conv, all encoder layers on P (+1 [CLS]) tokens, SigLIP's pooling head when enabled."""
    hidden, intermediate = int(config.hidden_size), int(config.intermediate_size)
    patch = square_size("patch_size", config.patch_size)
    patches = _vit_patches(config)
    tokens = patches + (1 if isinstance(config, CLIPVisionConfig) else 0)
    embed = 2 * patches * hidden * int(config.num_channels) * patch**2
    layers = int(config.num_hidden_layers) * _encoder_layer(tokens, tokens**2, hidden, intermediate, gated=False)
    head = 0
    if isinstance(config, SiglipVisionConfig) and config.vision_use_head:
        # nn.MultiheadAttention with one probe query: q and o on 1 token, k and v on all, then a 2-matrix MLP on 1.
        head = 4 * hidden**2 + 4 * tokens * hidden**2 + 4 * tokens * hidden + 4 * hidden * intermediate
    return images * (embed + layers + head)


def _grid_rows(grid_thw: GridTHW, merge: int) -> list[tuple[int, int, int]]:
    rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else grid_thw
    grids: list[tuple[int, int, int]] = []
    for row in rows:
        if len(row) != 3:
            raise ConfigError(f"grid_thw rows must be (t, h, w) in patches, got {list(row)}")
        t, h, w = (_positive("grid_thw entry", int(value)) for value in row)
        if h % merge or w % merge:
            raise ConfigError(
                f"grid_thw (t={t}, h={h}, w={w}) must have h and w divisible by spatial_merge_size={merge}"
            )
        grids.append((t, h, w))
    if not grids:
        raise ConfigError("grid_thw must hold at least one (t, h, w) row")
    return grids


def _window_chunks(units: int, window: int) -> list[int]:
    """Side lengths of the windows that tile ``units`` merged units; the last one is cut short."""
    return [window] * (units // window) + ([units % window] if units % window else [])


def _qwen_vision_flops(config: QwenVisionConfig, grid_thw: GridTHW) -> int:
    """Qwen2-VL / 2.5-VL / 3-VL vision tower: Conv3d patch embedding, blocks, patch merger(s).

    Attention runs per frame (h * w patches) in full-attention blocks; Qwen2.5-VL's other blocks attend within
    windows of ``window_size // patch_size // spatial_merge_size`` merged units per side, each merged unit being
    merge^2 patches. The merger is LayerNorm + Linear(d m^2, d m^2) + GELU + Linear(d m^2, d_out) per merged token;
    Qwen3-VL runs one more merger per DeepStack level (``deepstack_visual_indexes``) and adds its learned position
    embedding by interpolation (no matrix product).
    """
    merge = int(config.spatial_merge_size)
    grids = _grid_rows(grid_thw, merge)
    patch = square_size("patch_size", config.patch_size)
    depth = int(config.depth)
    if isinstance(config, Qwen2_5_VLVisionConfig):
        hidden, intermediate, out = int(config.hidden_size), int(config.intermediate_size), int(config.out_hidden_size)
        full_blocks = sum(1 for index in range(depth) if index in config.fullatt_block_indexes)
        window = int(config.window_size) // patch // merge
        if window < 1 and full_blocks < depth:
            raise ConfigError(
                f"window_size={config.window_size} px is smaller than one merged unit "
                f"({patch * merge} px = patch_size * spatial_merge_size); windowed attention cannot run"
            )
    elif isinstance(config, Qwen3VLVisionConfig):
        hidden, intermediate, out = int(config.hidden_size), int(config.intermediate_size), int(config.out_hidden_size)
        full_blocks, window = depth, 0
    else:
        hidden, out = int(config.embed_dim), int(config.hidden_size)
        intermediate = int(config.embed_dim * config.mlp_ratio)
        full_blocks, window = depth, 0
    patches = sum(t * h * w for t, h, w in grids)
    full_pairs = sum(t * (h * w) ** 2 for t, h, w in grids)
    window_pairs = 0
    if full_blocks < depth:
        for t, h, w in grids:
            rows = sum(side**2 for side in _window_chunks(h // merge, window))
            cols = sum(side**2 for side in _window_chunks(w // merge, window))
            window_pairs += t * merge**4 * rows * cols
    gated = isinstance(config, Qwen2_5_VLVisionConfig)
    kernel = int(config.in_channels) * square_size("temporal_patch_size", config.temporal_patch_size) * patch**2
    embed = 2 * patches * hidden * kernel
    full = full_blocks * _encoder_layer(patches, full_pairs, hidden, intermediate, gated)
    windowed = (depth - full_blocks) * _encoder_layer(patches, window_pairs, hidden, intermediate, gated)
    merged_tokens, merged_dim = patches // merge**2, hidden * merge**2
    mergers = 1 + (len(config.deepstack_visual_indexes) if isinstance(config, Qwen3VLVisionConfig) else 0)
    merger = mergers * 2 * merged_tokens * merged_dim * (merged_dim + out)
    return embed + full + windowed + merger


def vision_flops(vision_config: VisionConfig, *, images: int | None = None, grid_thw: GridTHW | None = None) -> int:
    """FLOPs of the vision tower, counting every layer that runs.

    CLIP / SigLIP (``images`` images at the config's ``image_size``, default 1): all ``num_hidden_layers`` layers run
    even when the VLM reads features of an earlier layer (LLaVA uses layer -2), because HF runs the whole tower.
    Qwen2-VL / 2.5-VL: ``grid_thw`` gives (t, h, w) in patches per image or video, as the processor returns it; the
    result includes the patch merger, which plays the role of LLaVA's projector.
    """
    if isinstance(vision_config, CLIPVisionConfig | SiglipVisionConfig):
        if grid_thw is not None:
            raise ConfigError(f"grid_thw is for Qwen2-VL vision towers; {type(vision_config).__name__} takes images")
        return _vit_flops(vision_config, _positive("images", 1 if images is None else images))
    if isinstance(vision_config, QwenVisionConfig):
        if grid_thw is None:
            raise ConfigError(f"{type(vision_config).__name__} needs grid_thw, one (t, h, w) row per image")
        if images is not None and images != len(grid_thw):
            raise ConfigError(f"images={images} but grid_thw has {len(grid_thw)} rows; pass grid_thw alone")
        return _qwen_vision_flops(vision_config, grid_thw)
    raise ConfigError(
        f"no vision FLOPs formula for {type(vision_config).__name__}; supported: CLIPVisionConfig, "
        "SiglipVisionConfig, Qwen2VLVisionConfig, Qwen2_5_VLVisionConfig, Qwen3VLVisionConfig"
    )


def projector_flops(config: LlavaLikeConfig, tokens: int) -> int:
    """LLaVA / LLaVA-NeXT ``multi_modal_projector`` (Linear, GELU, Linear) on ``tokens`` visual tokens.

    2n (d_v F) d + 2n d^2, with d_v the vision hidden size, F the number of feature layers concatenated and d the
    text hidden size. Qwen2-VL has no separate projector: its merger is counted by :func:`vision_flops`.
    """
    if isinstance(config, Qwen2VLConfig | Qwen2_5_VLConfig):
        raise ConfigError(
            "Qwen2-VL has no separate projector: its patch merger is part of the vision tower and counted by "
            "vision_flops(config.vision_config, grid_thw=...)"
        )
    if not isinstance(config, LlavaConfig | LlavaNextConfig | LlavaOnevisionConfig):
        raise ConfigError(
            f"no projector FLOPs formula for {type(config).__name__}; supported: LlavaConfig, LlavaNextConfig, "
            "LlavaOnevisionConfig"
        )
    if isinstance(tokens, bool) or tokens < 0:
        raise ConfigError(f"tokens must be >= 0, got tokens={tokens!r}")
    layers = config.vision_feature_layer
    features = 1 if isinstance(layers, int) else len(layers)
    vision_dim = int(_vit_config(config).hidden_size) * features
    text_dim = _DecoderShape.from_config(config).hidden
    return 2 * tokens * text_dim * (vision_dim + text_dim)


def prefill_flops(text_config: PretrainedConfig, tokens: int, logits_to_keep: int = 1) -> int:
    """The language model on a prompt of ``tokens`` tokens at once, starting from an empty cache.

    ``logits_to_keep`` follows HF's argument: lm_head runs on the last ``logits_to_keep`` positions, 0 meaning all of
    them. The default 1 is what ``generate`` passes; a bare ``model(...)`` call uses 0. A composite VLM config is
    accepted and its text config used.
    """
    shape = _DecoderShape.from_config(text_config)
    tokens = _positive("tokens", tokens)
    if isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise ConfigError(f"logits_to_keep must be >= 0 (0 = all positions), got {logits_to_keep!r}")
    logits = tokens if logits_to_keep == 0 else min(logits_to_keep, tokens)
    return shape.forward(tokens, keys=tokens, logits=logits)


def decode_flops(text_config: PretrainedConfig, context: int) -> int:
    """One decode step: one new token attending to ``context`` cached tokens and itself, lm_head on that token."""
    shape = _DecoderShape.from_config(text_config)
    if isinstance(context, bool) or context < 0:
        raise ConfigError(f"context must be >= 0 cached tokens, got context={context!r}")
    return shape.forward(1, keys=context + 1, logits=1)


def _breakdown(
    text_config: PretrainedConfig, vision: int, projector: int, prompt_tokens: int, logits_to_keep: int
) -> FlopsBreakdown:
    shape = _DecoderShape.from_config(text_config)
    return FlopsBreakdown(
        vision=float(vision),
        projector=float(projector),
        prefill=float(prefill_flops(text_config, prompt_tokens, logits_to_keep)),
        decode_per_token=float(decode_flops(text_config, prompt_tokens)),
        decode_growth=float(4 * shape.layers * shape.heads * shape.head_dim),
    )


def _prompt_tokens(visual_tokens_kept: int, text_tokens: int) -> int:
    for name, value in (("visual_tokens_kept", visual_tokens_kept), ("text_tokens", text_tokens)):
        if isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be >= 0, got {name}={value!r}")
    return _positive("visual_tokens_kept + text_tokens", visual_tokens_kept + text_tokens)


def llava_flops(
    config: LlavaLikeConfig,
    visual_tokens_kept: int,
    text_tokens: int,
    images: int = 1,
    projector_tokens: int | None = None,
    logits_to_keep: int = 1,
) -> FlopsBreakdown:
    """One LLaVA / LLaVA-NeXT request: ``images`` images (NeXT: base image plus tiles) through the vision tower.

    The projector runs on ``projector_tokens``; by default on every encoder token the VLM selects (patches, plus
    [CLS] for ``vision_feature_select_strategy="full"``), since HF projects all features before any pruning. The
    language model sees ``visual_tokens_kept + text_tokens`` tokens (NeXT's newline tokens count as visual).
    """
    prompt = _prompt_tokens(visual_tokens_kept, text_tokens)
    vision_config = _vit_config(config)
    images = _positive("images", images)
    if projector_tokens is None:
        per_image = _vit_patches(vision_config)
        if config.vision_feature_select_strategy == "full" and isinstance(vision_config, CLIPVisionConfig):
            per_image += 1
        projector_tokens = images * per_image
    vision = vision_flops(vision_config, images=images)
    return _breakdown(config, vision, projector_flops(config, projector_tokens), prompt, logits_to_keep)


def qwen2_vl_flops(
    config: QwenVLConfig, grid_thw: GridTHW, visual_tokens_kept: int, text_tokens: int, logits_to_keep: int = 1
) -> FlopsBreakdown:
    """One Qwen2-VL / 2.5-VL / 3-VL request; ``visual_tokens_kept`` counts merged tokens (at most
    sum(t h w) / merge^2).

    The merger (and Qwen3-VL's DeepStack mergers) is inside ``vision``, so ``projector`` is 0. Adding DeepStack
    features into the language model's hidden states is no matrix product.
    """
    prompt = _prompt_tokens(visual_tokens_kept, text_tokens)
    vision_config = _qwen_vision_config(config)
    merge = int(vision_config.spatial_merge_size)
    available = sum(t * h * w for t, h, w in _grid_rows(grid_thw, merge)) // merge**2
    if visual_tokens_kept > available:
        raise ConfigError(f"visual_tokens_kept={visual_tokens_kept} exceeds the {available} merged tokens of grid_thw")
    vision = vision_flops(vision_config, grid_thw=grid_thw)
    return _breakdown(config, vision, 0, prompt, logits_to_keep)


def internvl_flops(
    config: PretrainedConfig, crops: int, visual_tokens_kept: int, text_tokens: int, projector_tokens: int
) -> FlopsBreakdown:
    """One InternVL request: ``crops`` crops through InternViT, ``projector_tokens`` shuffled tokens through the
    projector, the LLM on ``visual_tokens_kept + text_tokens`` tokens (FlopCounterMode's convention).

    InternViT per crop: the patch convolution 2 P d c p^2, then every layer on P + 1 tokens ([CLS]) with full
    attention (norms, layer scales and the pixel shuffle are not matrix products). The projector is LayerNorm,
    Linear(4 d, D), GELU, Linear(D, D) per token: 2 n D (4 d + D), with d the vision and D the text width.
    """
    prompt = _prompt_tokens(visual_tokens_kept, text_tokens)
    vision = config.vision_config
    hidden, intermediate = int(vision.hidden_size), int(vision.intermediate_size)
    patch = square_size("patch_size", vision.patch_size)
    patches = (square_size("image_size", vision.image_size) // patch) ** 2
    tokens = patches + 1
    embed = 2 * patches * hidden * int(vision.num_channels) * patch**2
    layers = int(vision.num_hidden_layers) * _encoder_layer(tokens, tokens**2, hidden, intermediate, gated=False)
    shuffled = hidden * round(1 / float(config.downsample_ratio)) ** 2
    text_hidden = int(config.get_text_config().hidden_size)
    projector = 2 * projector_tokens * text_hidden * (shuffled + text_hidden)
    return _breakdown(config, crops * (embed + layers), projector, prompt, 1)


def _layer_tokens(shape: _DecoderShape, layer_tokens: Sequence[int]) -> list[int]:
    tokens = [int(value) for value in layer_tokens]
    if len(tokens) != shape.layers:
        raise ConfigError(f"layer_tokens has {len(tokens)} entries for a {shape.layers}-layer language model")
    for value in tokens:
        _positive("layer_tokens entry", value)
    return tokens


def staged_prefill_flops(text_config: PretrainedConfig, layer_tokens: Sequence[int], logits_to_keep: int = 1) -> int:
    """The prompt's prefill when layer i holds ``layer_tokens[i]`` tokens (in-LLM pruning drops tokens between
    layers): each layer's self-attention over its own tokens; lm_head on the last layer's last ``logits_to_keep``
    positions (0: all). With every entry equal this is :func:`prefill_flops`."""
    shape = _DecoderShape.from_config(text_config)
    tokens = _layer_tokens(shape, layer_tokens)
    if isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise ConfigError(f"logits_to_keep must be >= 0 (0 = all positions), got {logits_to_keep!r}")
    logits = tokens[-1] if logits_to_keep == 0 else min(logits_to_keep, tokens[-1])
    return sum(shape.layer(count, count) for count in tokens) + 2 * logits * shape.hidden * shape.vocab


def staged_decode_flops(text_config: PretrainedConfig, layer_contexts: Sequence[int]) -> int:
    """One decode step when layer i has ``layer_contexts[i]`` cached tokens: each layer attends to its own cache and
    the new token. With every entry equal this is :func:`decode_flops`."""
    shape = _DecoderShape.from_config(text_config)
    contexts = [int(value) for value in layer_contexts]
    if len(contexts) != shape.layers or any(value < 0 for value in contexts):
        raise ConfigError(f"layer_contexts must hold {shape.layers} counts >= 0, got {contexts}")
    return sum(shape.layer(1, context + 1) for context in contexts) + 2 * shape.hidden * shape.vocab


def ranking_flops(text_config: PretrainedConfig, keys: int) -> int:
    """The last query's scores against ``keys`` keys in one layer, all heads: 2 keys Hh (in-LLM ranking)."""
    shape = _DecoderShape.from_config(text_config)
    return 2 * keys * shape.heads * shape.head_dim


def ranking_projection_flops(text_config: PretrainedConfig, tokens: int) -> int:
    """The q, k and v projections of one layer over ``tokens`` positions, 2 n d (Hh + 2 Kh): what ranking with the
    next layer's projections of the current hidden states costs besides the scores (PyramidDrop's released code)."""
    shape = _DecoderShape.from_config(text_config)
    return 2 * tokens * shape.hidden * shape.head_dim * (shape.heads + 2 * shape.kv_heads)


def pre_llm_equivalent(text_config: PretrainedConfig, visual_per_layer: Sequence[int], text_tokens: int) -> float:
    """The visual-token count ``v`` for which every layer on ``text_tokens + v`` tokens costs what the layers cost
    on ``text_tokens + visual_per_layer[i]`` (lm_head excluded: it is the same for both).

    A layer costs ``a n + b n^2`` on n tokens (a: projections and MLP per token, b = 4Hh: attention), so
    ``v = (-a + sqrt(a^2 + 4 b C / depth)) / (2 b) - text_tokens`` with C the summed layer cost. Because attention is
    quadratic, ``v`` lies between the mean of ``visual_per_layer`` and its maximum.
    """
    shape = _DecoderShape.from_config(text_config)
    counts = _layer_tokens(shape, [text_tokens + visual for visual in visual_per_layer])
    per_token = shape.layer(1, 0)
    quadratic = 4 * shape.heads * shape.head_dim
    mean_cost = sum(shape.layer(count, count) for count in counts) / shape.layers
    tokens = (-per_token + math.sqrt(per_token**2 + 4 * quadratic * mean_cost)) / (2 * quadratic)
    return tokens - text_tokens


def with_layer_tokens(
    breakdown: FlopsBreakdown,
    text_config: PretrainedConfig,
    visual_per_layer: Sequence[int],
    text_tokens: int,
    ranking_keys: Sequence[int] = (),
    logits_to_keep: int = 1,
    ranking_projections: bool = False,
    method_flops: int = 0,
) -> FlopsBreakdown:
    """``breakdown`` with the language model's prefill and decode recounted for per-layer visual tokens.

    Args:
        breakdown: a request's breakdown as the family computes it (vision, projector, pre-LLM pruning).
        visual_per_layer: visual tokens each layer holds (see ``LLMPruning.visual_per_layer``).
        text_tokens: the prompt's text tokens (every layer holds them).
        ranking_keys: for every boundary that ranks tokens, the keys the last query is scored against (the prompt
            tokens of the layer before it); their products are added to ``pruning``.
        logits_to_keep: as for :func:`prefill_flops`.
        ranking_projections: the ranking projects the current hidden states with the next layer's q, k and v
            (:func:`ranking_projection_flops`, PyramidDrop) instead of reading a layer's own attention.
        method_flops: products a method with its own selection rule spent (added to ``pruning`` too).

    Also fills ``visual_tokens_mean`` and ``visual_tokens_equivalent``. With equal counts everywhere and no
    ranking, the FLOPs are unchanged.
    """
    shape = _DecoderShape.from_config(text_config)
    prompt = [text_tokens + visual for visual in visual_per_layer]
    ranking = method_flops + sum(ranking_flops(text_config, keys) for keys in ranking_keys)
    if ranking_projections:
        ranking += sum(ranking_projection_flops(text_config, keys) for keys in ranking_keys)
    return replace(
        breakdown,
        prefill=float(staged_prefill_flops(text_config, prompt, logits_to_keep)),
        decode_per_token=float(staged_decode_flops(text_config, prompt)),
        decode_growth=float(4 * shape.layers * shape.heads * shape.head_dim),
        pruning=breakdown.pruning + float(ranking),
        visual_tokens_mean=sum(visual_per_layer) / len(visual_per_layer),
        visual_tokens_equivalent=pre_llm_equivalent(text_config, visual_per_layer, text_tokens),
    )
