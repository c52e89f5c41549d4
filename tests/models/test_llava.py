"""What is LLaVA-1.5's own, on the tiny fixture: the tap of the feature layer, [CLS]-reading strategies, adaptive
counts. The contract every family meets (stock equality, hand-fed equivalence, KV cache, batching, every strategy,
FLOPs) is ``tests/models/test_contract.py``, with this family's hook in ``tests/models/families/tiny_llava.py``."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fopru
from fopru.components import CONFIG_DIR
from fopru.errors import ConfigError
from fopru.models.llava import LlavaAdapter
from fopru.strategies import VisionZipStrategy
from tests.models.conftest import example_batch, make_pipeline


@pytest.fixture(scope="module")
def adapter() -> LlavaAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava.yaml"))
    assert isinstance(built, LlavaAdapter)
    return built.load()  # type: ignore[return-value]


def batch_of(adapter: LlavaAdapter, samples: list[int]) -> dict[str, torch.Tensor]:
    return dict(example_batch("tiny_llava", adapter, samples))


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


def test_a_tap_layer_outside_the_encoder_is_refused(adapter: LlavaAdapter) -> None:
    pipeline = make_pipeline("rank")
    pipeline.significance.layer = 7
    with pytest.raises(ConfigError, match=r"significance\.layer=7 is outside the vision encoder's 4 layers"):
        adapter.prefill_inputs(batch_of(adapter, [0]), pipeline)


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
