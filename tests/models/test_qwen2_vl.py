"""What is Qwen2-VL's / Qwen2.5-VL's own: M-RoPE continuation and refusals, the merged layout, the tap against an
independent recomputation, the windowed layers. The contract every family meets is ``tests/models/test_contract.py``,
with the hooks in ``tests/models/families/tiny_qwen2_vl.py`` (Qwen2.5-VL shares it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, choices, load
from fopru.errors import ConfigError
from fopru.layout import VisualLayout
from fopru.models.qwen2_vl import Qwen2VLAdapter, Qwen25VLAdapter
from fopru.pipeline import PruningPipeline
from fopru.reorder.base import ReorderPolicy
from fopru.significance.sources import FocalSignificance
from tests.models.conftest import example_batch, make_pipeline

CONF = CONFIG_DIR / "model"
# Every registered tiny fixture of this family (Qwen2-VL and its subclasses), read from conf/model/.
FAMILIES = [
    name
    for name in choices("model")
    if name.startswith("tiny_")
    and issubclass(get_class(str(OmegaConf.load(CONF / f"{name}.yaml")._target_)), Qwen2VLAdapter)
]
PRUNED = [("rank", 0.25), ("row", 0.5)]


@pytest.fixture(scope="module", params=FAMILIES)
def adapter(request: pytest.FixtureRequest) -> Qwen2VLAdapter:
    built = instantiate(OmegaConf.load(CONF / f"{request.param}.yaml"))
    assert isinstance(built, Qwen2VLAdapter)
    built.load()
    return built


def tiny_qwen25(tap_layer: int | None = None) -> Qwen25VLAdapter:
    built = Qwen25VLAdapter("tiny:qwen25_vl", tap_layer=tap_layer)
    built.load()
    return built


def pipeline(strategy: str = "none", keep: float = 1.0, layer: int | None = None) -> PruningPipeline:
    built = make_pipeline(strategy, keep=keep, positions="original")
    if layer is None:
        return built
    return PruningPipeline(FocalSignificance(layer=layer), built.strategy, built.reorder, built.budget)


def batch_of(adapter: Qwen2VLAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    """The fixture's examples: 56 x 56 (7 x 7 merged tokens) and 84 x 56 (resized to 80 x 56: 7 x 10)."""
    return example_batch("tiny_qwen2_vl", adapter, samples)


# -- 1. decoding continues where M-RoPE left off ------------------------------------------------------------------
@pytest.mark.parametrize("samples", [[0], [0, 1]], ids=["B1", "B2"])
def test_decoding_continues_after_the_largest_m_rope_position(adapter: Qwen2VLAdapter, samples: list[int]) -> None:
    """Keep-all equals the stock model (``tests/models/test_contract.py``); here the position it continues at."""
    batch = batch_of(adapter, samples)
    if len(samples) == 2:
        assert batch["image_grid_thw"][0].tolist() != batch["image_grid_thw"][1].tolist()
    inputs = adapter.prefill_inputs(batch, pipeline())
    with torch.no_grad():
        adapter.model(**batch)
    # HF continues at len(prompt) + rope_delta = max position + 1, the shared loop's next_position.
    rope_delta = adapter.model.model.rope_deltas.flatten()
    assert torch.equal(inputs.next_position, batch["attention_mask"].sum(dim=1) + rope_delta)


# -- 2. the strategy counts merged tokens on the 7 x 7 layout ------------------------------------------------------
@pytest.mark.parametrize(("strategy", "keep"), PRUNED)
def test_the_strategy_counts_merged_tokens_of_the_layout(adapter: Qwen2VLAdapter, strategy: str, keep: float) -> None:
    """The count the contract suite finds in the cache is the strategy's own on the merged layout."""
    batch = batch_of(adapter, [0])
    pruning = pipeline(strategy, keep)
    features, summaries = adapter.encode_images(batch, pruning.significance)
    assert summaries is not None
    layout = VisualLayout(49, ((7, 7),), has_cls=False, merge=2)
    significance = pruning.significance.score(summaries[0], features[0][None], layout)
    reported = pruning.strategy.select(significance, layout, pruning.budget).kept
    assert reported == {"rank": 12, "row": 3 * 7}[strategy]  # floor(0.25 * 49) tokens; floor(0.5 * 7) rows of 7
    assert adapter.prefill_inputs(batch, pruning).visual_tokens.tolist() == [reported]


def test_attention_free_significance_prunes_without_a_tap(adapter: Qwen2VLAdapter) -> None:
    batch = batch_of(adapter, [0])
    pruning = make_pipeline("rank", keep=0.25, significance="norm", positions="original")
    features, summaries = adapter.encode_images(batch, pruning.significance)
    assert summaries is None
    inputs = adapter.prefill_inputs(batch, pruning)
    expected = features[0].norm(dim=-1).topk(12).indices.sort().values
    assert torch.equal(inputs.images[0].indices, expected)


# -- 3. the tapped significance against an independent recomputation --------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def patch_coordinates(adapter: Qwen2VLAdapter, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) patch of every token the tapped layer sees, read back from its own rotary angles.

    The vision rotary embedding lays out [h angles, w angles] twice; at the slowest frequency the angle is below
    pi / 2 for these grids, so asin recovers it. This uses neither the window index nor the processor's patch order.
    """
    visual: Any = adapter.visual
    inv_freq = visual.rotary_pos_emb.inv_freq
    frequencies, slowest = inv_freq.shape[0], float(inv_freq[-1])
    row = torch.round(torch.asin(sin[:, frequencies - 1].double()) / slowest).long()
    col = torch.round(torch.asin(sin[:, 2 * frequencies - 1].double()) / slowest).long()
    return row, col


def expected_received(adapter: Qwen2VLAdapter, batch: Mapping[str, torch.Tensor], layer: int) -> list[torch.Tensor]:
    """Attention received per merged token (raster order), recomputed from the tapped block's input, per image."""
    attention: Any = adapter.attention_of(adapter.vision_layers()[layer])
    captured: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.update(kwargs, hidden_states=args[0] if args else kwargs["hidden_states"])

    hook = attention.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        adapter.model.get_image_features(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
    hook.remove()
    hidden, (cos, sin) = captured["hidden_states"], captured["position_embeddings"]
    query, key, _ = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1).unbind(1)
    query = query * cos[:, None] + rotate_half(query) * sin[:, None]
    key = key * cos[:, None] + rotate_half(key) * sin[:, None]
    rows_of, cols_of = patch_coordinates(adapter, sin)
    merge = adapter.merge_size
    results = []
    offset = 0
    for _, rows, cols in batch["image_grid_thw"].tolist():
        span = slice(offset, offset + rows * cols)  # each image's tokens stay contiguous, also in window order
        q, k = query[span].transpose(0, 1), key[span].transpose(0, 1)
        received = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1).mean(0).mean(0)
        merged = (rows_of[span] // merge) * (cols // merge) + cols_of[span] // merge
        assert torch.equal(merged.bincount(), torch.full((rows * cols // merge**2,), merge**2))
        # Qwen2-VL runs the merge blocks in raster order; Qwen2.5-VL's windows reorder them (several per image).
        assert bool((merged.diff() >= 0).all()) != isinstance(adapter, Qwen25VLAdapter)
        results.append(received.new_zeros(rows * cols // merge**2).index_add_(0, merged, received)[None])
        offset += rows * cols
    return results


@pytest.mark.parametrize("layer", [None, 1])
def test_tapped_significance_equals_a_recomputation(adapter: Qwen2VLAdapter, layer: int | None) -> None:
    batch = batch_of(adapter, [0, 1])
    source = FocalSignificance(layer=layer)
    _, summaries = adapter.encode_images(batch, source)
    assert summaries is not None
    tapped = adapter.tap_index(source)
    assert tapped == (3 if layer is None else layer)
    for summary, expected in zip(summaries, expected_received(adapter, batch, tapped), strict=True):
        torch.testing.assert_close(summary.received, expected)
        torch.testing.assert_close(summary.paid, torch.full_like(expected, 1 / expected.shape[1]))
        assert summary.cls is None


# -- 4. refusals ---------------------------------------------------------------------------------------------------
def test_compact_positions_are_refused_and_auto_means_original(adapter: Qwen2VLAdapter) -> None:
    batch = batch_of(adapter, [0])
    with pytest.raises(ConfigError, match=r"M-RoPE.*'original'"):
        adapter.generate(batch, make_pipeline("rank", keep=0.25, positions="compact"), max_new_tokens=1)
    with pytest.raises(ConfigError, match=r"M-RoPE.*'original'"):
        adapter.prefill_inputs(batch, make_pipeline("rank", keep=0.25, positions="compact"))
    rank = pipeline("rank", 0.25)
    auto = PruningPipeline(rank.significance, rank.strategy, load("reorder", "original", ReorderPolicy), rank.budget)
    assert auto.reorder.positions == "auto"  # the registered default
    automatic, original = adapter.prefill_inputs(batch, auto), adapter.prefill_inputs(batch, rank)
    assert torch.equal(automatic.position_ids, original.position_ids)
    torch.testing.assert_close(automatic.inputs_embeds, original.inputs_embeds)


@pytest.mark.parametrize("layer", [0, 2, -2])
def test_a_windowed_tap_layer_is_refused_on_qwen25(layer: int) -> None:
    adapter = tiny_qwen25()
    with pytest.raises(ConfigError, match=r"windowed attention.*\[1, 3\]"):
        adapter.prefill_inputs(batch_of(adapter, [0]), pipeline("rank", 0.25, layer=layer))
    configured = tiny_qwen25(tap_layer=layer)
    with pytest.raises(ConfigError, match=r"windowed attention.*\[1, 3\]"):
        configured.prefill_inputs(batch_of(configured, [0]), pipeline("rank", 0.25))
