"""Analytic FLOPs against torch's FlopCounterMode on tiny random-weight models built from configs."""

from collections.abc import Callable

import pytest
import torch
from torch.utils.flop_counter import flop_registry
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from fopru.efficiency import (
    FlopsBreakdown,
    counted_flops,
    decode_flops,
    llava_flops,
    prefill_flops,
    projector_flops,
    qwen2_vl_flops,
    vision_flops,
)
from fopru.errors import ConfigError

# Every case below agrees exactly today; 1% leaves room for version-dependent extras (a rotary embedding computed
# as a matmul, as in older transformers, adds head_dim * L FLOPs) while still catching any missing matrix product.
TOLERANCE = 0.01
IMPLEMENTATIONS = ["sdpa", "eager"]
TEXT = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    bos_token_id=None,
    eos_token_id=None,
)
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
VIT = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7
)
QWEN2_VL_VISION = dict(
    depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=4, temporal_patch_size=2
)
QWEN2_5_VL_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=40,
    out_hidden_size=64,
    num_heads=4,
    patch_size=4,
    temporal_patch_size=2,
    window_size=16,  # 16 px // 4 px patches // merge 2 = windows of 2 x 2 merged units
    fullatt_block_indexes=[1],
)
QWEN_TOKENS = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)


def assert_agrees(analytic: float, run: Callable[[], object]) -> None:
    measured = counted_flops(run)
    assert analytic == pytest.approx(measured, rel=TOLERANCE), f"analytic {analytic} vs counted {measured}"


def pixel_values_for(vision_config: PretrainedConfig, grid_thw: torch.Tensor) -> torch.Tensor:
    """Flattened patches as the Qwen2-VL processor returns them: one row per (temporal patch, row, column)."""
    width = vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size**2
    return torch.randn(int(grid_thw.prod(-1).sum()), width)


def test_counter_counts_causal_attention_over_the_full_square() -> None:
    """The convention the formulas rely on: SDPA costs 4 L^2 H h whether causal or not."""
    torch.manual_seed(0)
    query = torch.randn(1, 4, 10, 8)
    full = 4 * 10 * 10 * 4 * 8
    aten = torch.ops.aten
    assert flop_registry[aten._scaled_dot_product_flash_attention](query, query, query, 0.0, True) == full
    assert (
        flop_registry[aten._scaled_dot_product_efficient_attention](query, query, query, None, False, 0.0, True) == full
    )
    causal = torch.ones(10, 10, dtype=torch.bool).tril()

    def eager() -> torch.Tensor:
        scores = (query @ query.transpose(-1, -2)).masked_fill(~causal, float("-inf"))
        return scores.softmax(-1) @ query

    assert counted_flops(eager) == full


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("images", [1, 2])
def test_clip_vision_tower(implementation: str, images: int) -> None:
    config = CLIPVisionConfig(**VIT, attn_implementation=implementation)
    model = CLIPVisionModel(config).eval()
    pixels = torch.randn(images, 3, 28, 28)
    # LLaVA reads hidden_states[-2] but the whole tower runs.
    assert_agrees(vision_flops(config, images=images), lambda: model(pixel_values=pixels, output_hidden_states=True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("use_head", [True, False])
def test_siglip_vision_tower(implementation: str, use_head: bool) -> None:
    config = SiglipVisionConfig(**VIT, vision_use_head=use_head, attn_implementation=implementation)
    model = SiglipVisionModel(config).eval()
    pixels = torch.randn(2, 3, 28, 28)
    assert_agrees(vision_flops(config, images=2), lambda: model(pixel_values=pixels))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("logits_to_keep", [0, 1, 5])
def test_llama_prefill_with_grouped_query_attention(implementation: str, logits_to_keep: int) -> None:
    config = LlamaConfig(**TEXT, attn_implementation=implementation)
    assert config.num_key_value_heads < config.num_attention_heads
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 200, (1, 20))
    assert_agrees(
        prefill_flops(config, 20, logits_to_keep=logits_to_keep),
        lambda: model(input_ids=ids, logits_to_keep=logits_to_keep),
    )


def test_mistral_prefill_with_explicit_head_dim() -> None:
    config = MistralConfig(**TEXT, head_dim=24, attn_implementation="sdpa")
    assert config.head_dim != config.hidden_size // config.num_attention_heads
    model = MistralForCausalLM(config).eval()
    ids = torch.randint(0, 200, (1, 12))
    assert_agrees(prefill_flops(config, 12, logits_to_keep=0), lambda: model(input_ids=ids))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_qwen2_prefill_then_one_decode_step(implementation: str) -> None:
    config = Qwen2Config(**TEXT, attn_implementation=implementation)
    model = Qwen2ForCausalLM(config).eval()
    prompt, cache = torch.randint(0, 200, (1, 17)), DynamicCache()
    assert_agrees(
        prefill_flops(config, 17, logits_to_keep=0),
        lambda: model(input_ids=prompt, past_key_values=cache, use_cache=True),
    )
    assert cache.get_seq_length() == 17
    token = torch.randint(0, 200, (1, 1))
    assert_agrees(decode_flops(config, 17), lambda: model(input_ids=token, past_key_values=cache, use_cache=True))


@pytest.mark.parametrize(
    ("config_class", "model_class", "feature_layer"),
    [(LlavaConfig, LlavaForConditionalGeneration, -2), (LlavaNextConfig, LlavaNextForConditionalGeneration, [-2, -1])],
)
def test_llava_projector(config_class: type, model_class: type, feature_layer: int | list[int]) -> None:
    config = config_class(
        vision_config=CLIPVisionConfig(**VIT), text_config=LlamaConfig(**TEXT), vision_feature_layer=feature_layer
    )
    projector = model_class(config).model.multi_modal_projector.eval()
    width = 32 if isinstance(feature_layer, int) else 32 * len(feature_layer)
    features = torch.randn(1, 16, width)
    assert_agrees(projector_flops(config, 16), lambda: projector(features))


@pytest.mark.parametrize("new_tokens", [1, 5])
def test_llava_generate_matches_breakdown_total(new_tokens: int) -> None:
    """Vision, projector, prefill with ``logits_to_keep=1`` and growing decode steps, as ``generate`` runs them."""
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VIT),
        text_config=LlamaConfig(**TEXT),
        image_token_id=255,
        attn_implementation="sdpa",
    )
    model = LlavaForConditionalGeneration(config).eval()
    ids = torch.cat([torch.full((1, 16), 255), torch.randint(0, 200, (1, 9))], dim=1)
    pixels = torch.randn(1, 3, 28, 28)
    breakdown = llava_flops(config, visual_tokens_kept=16, text_tokens=9)

    def generate() -> torch.Tensor:
        return model.generate(
            input_ids=ids, pixel_values=pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )

    assert_agrees(breakdown.total(new_tokens), generate)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_qwen2_vl_vision_tower(implementation: str) -> None:
    config = Qwen2VLConfig(
        vision_config=QWEN2_VL_VISION,
        text_config=dict(**TEXT, rope_parameters=MROPE),
        attn_implementation=implementation,
    )
    visual = Qwen2VLForConditionalGeneration(config).model.visual.eval()
    grid_thw = torch.tensor([[1, 4, 6], [2, 4, 4]])  # an image and a two-frame video
    pixels = pixel_values_for(config.vision_config, grid_thw)
    assert_agrees(vision_flops(config.vision_config, grid_thw=grid_thw), lambda: visual(pixels, grid_thw=grid_thw))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_qwen2_5_vl_vision_tower_with_windows(implementation: str) -> None:
    config = Qwen2_5_VLConfig(
        vision_config=QWEN2_5_VL_VISION,
        text_config=dict(**TEXT, rope_parameters=MROPE),
        attn_implementation=implementation,
    )
    visual = Qwen2_5_VLForConditionalGeneration(config).model.visual.eval()
    # 3 x 5 merged units in 2 x 2 windows: six windows, the last row and column cut short; the video fits one window.
    grid_thw = torch.tensor([[1, 6, 10], [2, 4, 4]])
    pixels = pixel_values_for(config.vision_config, grid_thw)
    windowed = vision_flops(config.vision_config, grid_thw=grid_thw)
    assert_agrees(windowed, lambda: visual(pixels, grid_thw=grid_thw))
    all_full = Qwen2_5_VLConfig(vision_config=dict(QWEN2_5_VL_VISION, fullatt_block_indexes=[0, 1, 2])).vision_config
    assert windowed < vision_flops(all_full, grid_thw=grid_thw)


def test_qwen2_5_vl_request_matches_forward() -> None:
    config = Qwen2_5_VLConfig(
        vision_config=QWEN2_5_VL_VISION, text_config=dict(**TEXT, rope_parameters=MROPE), **QWEN_TOKENS
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    grid_thw = torch.tensor([[1, 6, 10]])
    pixels = pixel_values_for(config.vision_config, grid_thw)
    ids = torch.tensor([[1, 252, *[250] * 15, 253, 5, 6, 7]])
    breakdown = qwen2_vl_flops(config, grid_thw, visual_tokens_kept=15, text_tokens=6, logits_to_keep=0)
    assert breakdown.projector == 0
    assert_agrees(
        breakdown.vision + breakdown.prefill,
        lambda: model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid_thw),
    )


def test_llava_1_5_7b_prefill_by_hand() -> None:
    """n = 616 tokens, d = 4096, m = 11008, 32 layers, V = 32064, MHA: 32 (8nd^2 + 4n^2 d + 6ndm) + 2dV."""
    config = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32064
    )
    assert prefill_flops(config, 616) == 8_177_645_518_848
    assert (
        decode_flops(config, 616) == 2 * 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * 32 * 617 * 4096 + 2 * 4096 * 32064
    )


def test_breakdown_total_sums_growing_decode_steps() -> None:
    breakdown = FlopsBreakdown(vision=1.0, projector=2.0, prefill=3.0, decode_per_token=10.0, decode_growth=1.0)
    assert breakdown.total(1) == 6.0
    assert breakdown.total(4) == 6.0 + 10.0 + 11.0 + 12.0
    with pytest.raises(ConfigError):
        breakdown.total(0)


def test_bad_inputs_raise_config_error() -> None:
    qwen = Qwen2VLConfig(vision_config=QWEN2_VL_VISION, text_config=dict(**TEXT, rope_parameters=MROPE))
    llava = LlavaConfig(vision_config=CLIPVisionConfig(**VIT), text_config=LlamaConfig(**TEXT))
    with pytest.raises(ConfigError, match="needs grid_thw"):
        vision_flops(qwen.vision_config)
    with pytest.raises(ConfigError, match="divisible by spatial_merge_size"):
        vision_flops(qwen.vision_config, grid_thw=[(1, 3, 4)])
    with pytest.raises(ConfigError, match="grid_thw is for Qwen2-VL"):
        vision_flops(llava.vision_config, grid_thw=[(1, 2, 2)])
    with pytest.raises(ConfigError, match="no vision FLOPs formula"):
        vision_flops(LlamaConfig(**TEXT))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="merger is part of the vision tower"):
        projector_flops(qwen, 4)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exceeds the 6 merged tokens"):
        qwen2_vl_flops(qwen, [(1, 4, 6)], visual_tokens_kept=7, text_tokens=3)
    with pytest.raises(ConfigError, match="logits_to_keep"):
        prefill_flops(llava, 10, logits_to_keep=-1)
    with pytest.raises(ConfigError, match="not a Llama-style decoder"):
        prefill_flops(CLIPVisionConfig(**VIT), 10)
