"""LLaVA-1.5 adapter on the tiny fixture: against stock transformers outputs and hand-fed language models."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fopru
from fopru.components import CONFIG_DIR, choices
from fopru.efficiency import counted_flops
from fopru.errors import ConfigError
from fopru.models.inputs import Generation
from fopru.models.llava import LlavaAdapter
from fopru.strategies import VisionZipStrategy
from tests.models.conftest import make_image, make_pipeline

PROMPTS = ["USER: <image>\nwhat is the shape in this image ? ASSISTANT:", "USER: <image>\nwhat color ? ASSISTANT:"]


@pytest.fixture(scope="module")
def adapter() -> LlavaAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava.yaml"))
    assert isinstance(built, LlavaAdapter)
    return built.load()  # type: ignore[return-value]


def batch_of(adapter: LlavaAdapter, samples: list[int]) -> dict[str, torch.Tensor]:
    return dict(adapter.prepare([make_image(seed) for seed in samples], [PROMPTS[seed % 2] for seed in samples]))


def stock_generate(adapter: LlavaAdapter, batch: dict[str, torch.Tensor], tokens: int) -> torch.Tensor:
    with torch.no_grad():
        output = adapter.model.generate(**batch, max_new_tokens=tokens, do_sample=False)
    return output[:, batch["input_ids"].shape[1] :]


def test_keep_all_matches_stock_logits_and_generation(adapter: LlavaAdapter) -> None:
    batch = batch_of(adapter, [0, 1])  # different prompt lengths: left padding
    pipeline = make_pipeline("none", keep=1.0)
    inputs = adapter.prefill_inputs(batch, pipeline)
    ours = adapter.prefill_logits(inputs)
    with torch.no_grad():
        stock = adapter.model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], stock[real], rtol=1e-4, atol=1e-4)
    generation = adapter.generate(batch, pipeline, max_new_tokens=8)
    stock_tokens = stock_generate(adapter, batch, 8)
    assert torch.equal(generation.tokens[:, : stock_tokens.shape[1]], stock_tokens)


def hand_fed_logits(
    adapter: LlavaAdapter, batch: dict[str, torch.Tensor], indices: torch.Tensor, positions: str
) -> torch.Tensor:
    """Logits of the stock language model fed by hand with the kept visual embeddings of one sample."""
    model = adapter.model
    with torch.no_grad():
        features = model.get_image_features(
            batch["pixel_values"], vision_feature_layer=-2, vision_feature_select_strategy="default"
        ).pooler_output[0]
        ids = batch["input_ids"][0]
        image_positions = (ids == model.config.image_token_id).nonzero().flatten()
        start, stop = int(image_positions[0]), int(image_positions[-1]) + 1
        embed = model.get_input_embeddings()
        inputs_embeds = torch.cat([embed(ids[:start]), features[indices], embed(ids[stop:])])[None]
        if positions == "compact":
            position_ids = torch.arange(inputs_embeds.shape[1])[None]
        else:
            position_ids = torch.cat([torch.arange(start), start + indices, torch.arange(stop, ids.shape[0])])[None]
        return model(inputs_embeds=inputs_embeds, position_ids=position_ids).logits[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("strategy", ["rank", "row", "random", "uniform"])
@pytest.mark.parametrize("positions", ["compact", "original"])
def test_pruned_logits_equal_a_hand_fed_language_model(adapter: LlavaAdapter, strategy: str, positions: str) -> None:
    batch = batch_of(adapter, [0])
    pipeline = make_pipeline(strategy, keep=0.34, positions=positions)  # type: ignore[arg-type]
    inputs = adapter.prefill_inputs(batch, pipeline)
    ours = adapter.prefill_logits(inputs)[0]
    expected = hand_fed_logits(adapter, batch, inputs.images[0].indices, positions)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("strategy", "keep", "expected"), [("rank", 0.25, 9), ("row", 0.34, 12), ("pool", 0.25, 9)])
def test_visual_tokens_and_kv_cache_hold_only_the_kept_tokens(
    adapter: LlavaAdapter, strategy: str, keep: float, expected: int
) -> None:
    batch = batch_of(adapter, [0])
    generation = adapter.generate(batch, make_pipeline(strategy, keep=keep), max_new_tokens=3)
    text_tokens = int((batch["input_ids"] != adapter.model.config.image_token_id).sum())
    assert generation.inputs.visual_tokens.tolist() == [expected]
    assert generation.inputs.images[0].embeddings.shape[0] == expected
    assert generation.prompt_cache_length == text_tokens + expected


@pytest.mark.parametrize("strategy", ["rank", "row"])
def test_a_pruned_batch_generates_what_each_sample_generates_alone(adapter: LlavaAdapter, strategy: str) -> None:
    pipeline = make_pipeline(strategy, keep=0.25)
    together = adapter.generate(batch_of(adapter, [0, 1, 2]), pipeline, max_new_tokens=6)
    for position, seed in enumerate([0, 1, 2]):
        alone = adapter.generate(batch_of(adapter, [seed]), pipeline, max_new_tokens=6)
        length = alone.tokens.shape[1]
        assert torch.equal(together.tokens[position, :length], alone.tokens[0])


def eager_attentions(adapter: LlavaAdapter, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every vision layer's attention weights, from the stock tower switched to eager attention for one call."""
    tower = adapter.model.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions: tuple[torch.Tensor, ...] = tower(pixel_values, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    return attentions


def test_significance_comes_from_the_feature_layer(adapter: LlavaAdapter) -> None:
    """The adapter's rank selection equals the public API on eager attention weights of layers[-2]."""
    batch = batch_of(adapter, [0, 1])
    inputs = adapter.prefill_inputs(batch, make_pipeline("rank", keep=0.25))
    attentions = eager_attentions(adapter, batch["pixel_values"])
    significance = fopru.focal_significance(attentions[-2], has_cls=True)
    expected = fopru.select_tokens(significance, (6, 6), 0.25, "rank")
    assert torch.equal(torch.stack([image.indices for image in inputs.images]), expected)


@pytest.mark.parametrize("strategy", choices("strategy"))
@pytest.mark.parametrize("significance", ["focal", "cls", "norm", "random"])
def test_every_strategy_and_source_runs_batched(adapter: LlavaAdapter, strategy: str, significance: str) -> None:
    generation = adapter.generate(
        batch_of(adapter, [0, 1]), make_pipeline(strategy, keep=0.25, significance=significance), max_new_tokens=2
    )
    assert generation.tokens.shape[0] == 2
    assert int(generation.inputs.visual_tokens.min()) >= 1


def test_a_tap_layer_outside_the_encoder_is_refused(adapter: LlavaAdapter) -> None:
    pipeline = make_pipeline("rank")
    pipeline.significance.layer = 7
    with pytest.raises(ConfigError, match=r"significance\.layer=7 is outside the vision encoder's 4 layers"):
        adapter.prefill_inputs(batch_of(adapter, [0]), pipeline)


#: The significance each strategy's FLOPs check pairs with (default focal; ``prumerge`` with uniform: the strategy
#: alone asks for the tap) and the tokens it generates (default 1).
FLOPS_SIGNIFICANCE = {"row": "cls", "pool": "norm", "uniform": "uniform", "divprune": "norm", "prumerge": "uniform"}
FLOPS_SIGNIFICANCE |= {"prumerge_plus": "cls", "vispruner": "norm"}
FLOPS_NEW_TOKENS = {"row": 3, "pool": 2, "visionzip": 2, "adafv": 2}


@pytest.mark.parametrize("strategy", choices("strategy"))
def test_analytic_flops_equal_a_counted_pruned_generation(adapter: LlavaAdapter, strategy: str) -> None:
    significance = FLOPS_SIGNIFICANCE.get(strategy, "focal")
    new_tokens = FLOPS_NEW_TOKENS.get(strategy, 1)
    batch = batch_of(adapter, [0])
    pipeline = make_pipeline(strategy, keep=0.25, significance=significance)
    generations: list[Generation] = []
    counted = counted_flops(lambda: generations.append(adapter.generate(batch, pipeline, max_new_tokens=new_tokens)))
    generation = generations[0]
    [breakdown] = adapter.flops(batch, generation.inputs, pipeline)
    assert breakdown.total(generation.tokens.shape[1]) == counted


@pytest.mark.parametrize("strategy", ["prumerge", "prumerge_plus"])
def test_adaptive_counts_reach_the_language_model_per_sample(adapter: LlavaAdapter, strategy: str) -> None:
    """Each image keeps its own count; the batch carries each sample's count and generates what it generates alone."""
    pipeline = make_pipeline(strategy, keep=0.5, significance="uniform")
    together = adapter.generate(batch_of(adapter, [0, 1, 2]), pipeline, max_new_tokens=4)
    counts = [image.embeddings.shape[0] for image in together.inputs.images]
    assert together.inputs.visual_tokens.tolist() == counts
    assert all(1 <= count <= 18 for count in counts)  # never above the budget: floor(0.5 * 36)
    for position, seed in enumerate([0, 1, 2]):
        alone = adapter.generate(batch_of(adapter, [seed]), pipeline, max_new_tokens=4)
        assert alone.inputs.visual_tokens.tolist() == [counts[position]]
        assert torch.equal(alone.inputs.images[0].indices, together.inputs.images[position].indices)
        assert torch.equal(together.tokens[position, : alone.tokens.shape[1]], alone.tokens[0])


def test_strategy_attention_without_a_reading_source_is_tapped(adapter: LlavaAdapter) -> None:
    """significance=uniform reads no attention, yet VisionZip gets the [CLS] row of the feature layer."""
    batch = batch_of(adapter, [0])
    inputs = adapter.prefill_inputs(batch, make_pipeline("visionzip", keep=0.25, significance="uniform"))
    reference = adapter.prefill_inputs(batch, make_pipeline("visionzip", keep=0.25, significance="cls"))
    assert torch.equal(inputs.images[0].indices, reference.images[0].indices)
    attentions = eager_attentions(adapter, batch["pixel_values"])
    cls_row = attentions[-2][0].mean(dim=0)[0, 1:]  # head mean of the [CLS] row over the 36 patches
    # floor(0.25 * 36) = 9 tokens: 8 dominant ([CLS] and 7 patches), 1 contextual
    dominant = VisionZipStrategy().split(9)[0] - 1
    expected = cls_row.topk(dominant).indices.sort().values
    kept = inputs.images[0].indices
    assert set(expected.tolist()) <= set(kept.tolist()) and kept.shape[0] == 8 and inputs.images[0].leading_cls
