"""What is Qwen3-VL's own, on the tiny seeded model and at the real checkpoints' structure: DeepStack features pruned
exactly as the merged tokens (same tokens, same order, same merges), the pruned prompt against the stock language
model fed by hand with the kept DeepStack features at the kept positions (also in significance order), and the
tapped block against a recomputation at the real structure on real photos.

The adapter contract (keep-all equals stock, hand-fed, KV length, batch = per-sample, every strategy and source,
FLOPs) runs in tests/models/test_contract.py through tests/models/families/tiny_qwen3_vl.py; the Qwen family's own
checks (the tap recomputed on the tiny model, M-RoPE decoding, refusals) in tests/models/test_qwen2_vl.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from fopru.components import CONFIG_DIR, choices, load
from fopru.models.qwen3_vl import ImageOnlyQwen3VLProcessor, Qwen3VLAdapter
from fopru.models.tiny.qwen2_vl import special_token_ids
from fopru.models.tiny.qwen3_vl import DEEPSTACK_LAYERS, text_config
from fopru.models.word_tokenizer import word_tokenizer
from fopru.pipeline import PruningPipeline
from fopru.reorder.base import ReorderPolicy
from fopru.significance.sources import FocalSignificance
from tests.models.conftest import example_batch, make_pipeline
from tests.models.test_qwen2_vl import expected_received

NAME = "tiny_qwen3_vl"


@pytest.fixture(scope="module")
def adapter() -> Qwen3VLAdapter:
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{NAME}.yaml"))
    assert isinstance(built, Qwen3VLAdapter)
    built.load()
    return built


def pipeline(strategy: str = "none", keep: float = 1.0, reorder: str = "original") -> PruningPipeline:
    built = make_pipeline(strategy, keep=keep, positions="original")
    order = load("reorder", reorder, ReorderPolicy)
    return PruningPipeline(built.significance, built.strategy, order, built.budget)


def stock_features(adapter: Qwen3VLAdapter, batch: Mapping[str, torch.Tensor]) -> tuple[Any, list[Any]]:
    """The stock vision output: per image its merged tokens, and per image its DeepStack levels."""
    with torch.no_grad():
        output: Any = adapter.model.get_image_features(
            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]
        )
    levels = output.deepstack_features
    per_image = [[level[image] for level in levels] for image in range(len(output.pooler_output))]
    return output.pooler_output, per_image


def hand_fed_logits(
    adapter: Qwen3VLAdapter, batch: Mapping[str, torch.Tensor], kept: torch.Tensor, deepstack: bool = True
) -> torch.Tensor:
    """The stock language model on one sample's prompt built by hand: text embeddings, the stock merged tokens
    ``kept`` (in that order) in the image's place, their stock M-RoPE positions, and (``deepstack``) the stock
    DeepStack features of the same tokens injected at those positions."""
    model = adapter.model
    merged, levels = stock_features(adapter, batch)
    ids = batch["input_ids"][0]
    placeholders = (ids == model.config.image_token_id).nonzero().flatten()
    start, stop = int(placeholders[0]), int(placeholders[-1]) + 1
    assert stop - start == merged[0].shape[0]
    with torch.no_grad():
        text = model.get_input_embeddings()(ids)
        embeds = torch.cat([text[:start], merged[0][kept], text[stop:]])[None]
        columns = torch.cat([torch.arange(start), start + kept, torch.arange(stop, ids.shape[0])])
        positions, _ = model.model.get_rope_index(
            input_ids=batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
        visual = torch.zeros(1, embeds.shape[1], dtype=torch.bool)
        visual[0, start : start + kept.shape[0]] = True
        injected: dict[str, Any] = {}
        if deepstack:
            injected = {"visual_pos_masks": visual, "deepstack_visual_embeds": [level[kept] for level in levels[0]]}
        hidden = model.model.language_model(
            inputs_embeds=embeds,
            position_ids=torch.as_tensor(positions)[:, :, columns],
            attention_mask=torch.ones_like(columns)[None],
            **injected,
        ).last_hidden_state
        logits: torch.Tensor = model.lm_head(hidden)
    return logits


# -- DeepStack ---------------------------------------------------------------------------------------------------
def test_the_fixture_has_deepstack_levels_the_stock_model_injects(adapter: Qwen3VLAdapter) -> None:
    """DeepStack is live in the tiny model: the stock forward differs without its features."""
    assert adapter.deepstack_layers() == list(DEEPSTACK_LAYERS)
    batch = example_batch(NAME, adapter, [0])
    everything = torch.arange(int((batch["input_ids"] == adapter.model.config.image_token_id).sum()))
    with torch.no_grad():
        stock = adapter.model(**batch).logits
    torch.testing.assert_close(hand_fed_logits(adapter, batch, everything), stock)
    assert not torch.allclose(hand_fed_logits(adapter, batch, everything, deepstack=False), stock, atol=1e-3)


@pytest.mark.parametrize(("strategy", "keep", "reorder"), [("rank", 0.3, "significance"), ("row", 0.5, "original")])
def test_pruned_prefill_equals_the_stock_language_model_fed_by_hand(
    adapter: Qwen3VLAdapter, strategy: str, keep: float, reorder: str
) -> None:
    """Kept merged tokens and kept DeepStack features, the same tokens in the same order (significance order too),
    at the kept tokens' original M-RoPE positions: the logits equal the stock language model's."""
    batch = example_batch(NAME, adapter, [1])
    inputs = adapter.prefill_inputs(batch, pipeline(strategy, keep, reorder))
    kept = inputs.images[0].indices
    assert kept.shape[0] < inputs.images[0].num_tokens
    if reorder == "original":
        assert torch.equal(kept, kept.sort().values)
    else:
        assert not torch.equal(kept, kept.sort().values)
    ours = adapter.prefill_logits(inputs)
    torch.testing.assert_close(ours, hand_fed_logits(adapter, batch, kept))
    # The check can fail: without DeepStack, or with the DeepStack features of the tokens in another order.
    assert not torch.allclose(ours, hand_fed_logits(adapter, batch, kept, deepstack=False), atol=1e-3)
    assert inputs.visual_mask is not None
    reversed_levels = []
    for level in inputs.deepstack:
        swapped = level.clone()
        swapped[inputs.visual_mask] = level[inputs.visual_mask].flip(0)
        reversed_levels.append(swapped)
    shuffled = replace(inputs, deepstack=tuple(reversed_levels))
    assert not torch.allclose(ours, adapter.prefill_logits(shuffled), atol=1e-3)


@pytest.mark.parametrize("strategy", choices("strategy"))
def test_every_strategy_carries_the_deepstack_features_of_its_tokens(adapter: Qwen3VLAdapter, strategy: str) -> None:
    """Whatever the strategy does (select, or merge with weights), each kept token's DeepStack features are the same
    combination of the image's DeepStack features as its embedding is of the merged tokens: W = kept @ pinv(merged)
    reproduces the kept embeddings and, applied to every level, the kept DeepStack features (checked where W is
    unique); the batch's second image is pruned alongside."""
    significance = {"pool": "norm", "divprune": "norm", "prumerge": "uniform", "vispruner": "norm"}.get(strategy)
    built = make_pipeline(strategy, keep=0.25, significance=significance or "focal", positions="original")
    batch = example_batch(NAME, adapter, [0, 1])
    inputs = adapter.prefill_inputs(batch, built)
    merged, levels = stock_features(adapter, batch)
    assert len(inputs.deepstack) == len(DEEPSTACK_LAYERS)
    assert inputs.visual_mask is not None
    # W is unique where the merged tokens are linearly independent: the 7 x 7 image's 49 tokens in 64 dimensions.
    tokens = merged[0].double()
    assert int(torch.linalg.matrix_rank(tokens)) == tokens.shape[0]
    for image, kept in enumerate(inputs.images[:1]):
        weights = kept.embeddings.double() @ torch.linalg.pinv(tokens)
        torch.testing.assert_close(weights @ tokens, kept.embeddings.double(), rtol=1e-4, atol=1e-5)
        assert len(kept.deepstack) == len(DEEPSTACK_LAYERS)
        for level, features in zip(levels[image], kept.deepstack, strict=True):
            torch.testing.assert_close(weights @ level.double(), features.double(), rtol=1e-4, atol=1e-5)
    # The assembled levels hold the kept features at the visual positions, sample by sample, zero elsewhere.
    for number, dense in enumerate(inputs.deepstack):
        expected = torch.cat([image.deepstack[number] for image in inputs.images])
        torch.testing.assert_close(dense[inputs.visual_mask], expected)
        assert not bool(dense[~inputs.visual_mask].any())


def test_a_tuple_of_merged_tokens_and_levels_from_the_vision_tower_prunes_alike(
    adapter: Qwen3VLAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases whose ``get_image_features`` returns (merged tokens, DeepStack levels), unsplit, give the same
    prompt as the output object of this one."""
    batch = example_batch(NAME, adapter, [0, 1])
    built = pipeline("rank", 0.25)
    expected = adapter.prefill_inputs(batch, built)
    stock = adapter.model.model.get_image_features

    def as_tuple(**kwargs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        output = stock(**kwargs)
        return torch.cat(output.pooler_output), [torch.cat(level) for level in output.deepstack_features]

    monkeypatch.setattr(adapter.model.model, "get_image_features", as_tuple)
    inputs = adapter.prefill_inputs(batch, built)
    torch.testing.assert_close(inputs.inputs_embeds, expected.inputs_embeds)
    for ours, theirs in zip(inputs.deepstack, expected.deepstack, strict=True):
        torch.testing.assert_close(ours, theirs)


# -- the real checkpoints' structure -------------------------------------------------------------------------------
#: The structural settings of the checkpoints' vision towers (their config.json as quoted in public repositories; the
#: 8B's equal transformers' Qwen3VLVisionConfig defaults), at small widths: 2B and 4B share theirs.
STRUCTURES = {
    "2B": {"depth": 24, "deepstack_visual_indexes": [5, 11, 17]},
    "8B": {"depth": 27, "deepstack_visual_indexes": [8, 16, 24]},
}
SMALL_VISION = {
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 2304,  # a 48 x 48 learned grid, interpolated to each image's
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
}
#: The checkpoints' preprocessor_config.json (Qwen2VLImageProcessor settings), as quoted in public repositories.
REAL_PROCESSOR = {
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
PHOTOS = ("astronaut", "coffee", "chelsea")  # 1:1, 2:3, 2:3 at other sizes (512, 400 x 600, 300 x 451)


def smart_resize(
    height: int, width: int, factor: int = 32, least: int = 65536, most: int = 16777216
) -> tuple[int, int]:
    """Qwen's resizing rule written out: both sides rounded to multiples of patch * merge = 32 pixels, the area
    brought within [shortest_edge, longest_edge] pixels keeping the aspect ratio."""
    import math

    rows, cols = round(height / factor) * factor, round(width / factor) * factor
    if rows * cols > most:
        beta = math.sqrt(height * width / most)
        rows, cols = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif rows * cols < least:
        beta = math.sqrt(least / (height * width))
        rows, cols = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return rows, cols


@pytest.fixture(scope="module", params=sorted(STRUCTURES))
def real_structure(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Qwen3VLAdapter:
    folder = tmp_path_factory.mktemp(f"qwen3_vl_{request.param}_structure")
    tokenizer = word_tokenizer(("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"))
    text = {**text_config(tokenizer), "num_hidden_layers": 4}  # 3 DeepStack levels reach layers 0, 1, 2
    config = Qwen3VLConfig(
        text_config=text, vision_config={**SMALL_VISION, **STRUCTURES[request.param]}, **special_token_ids(tokenizer)
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor = ImageOnlyQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**REAL_PROCESSOR), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    built = Qwen3VLAdapter(str(folder))
    built.load()
    return built


def photo(name: str) -> Image.Image:
    """A photo of scikit-image's sample data (``skimage.data``), read from the package's own files."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-image is not installed (pip install -e '.[dev]'); its sample photos are needed")
    [path] = sorted((Path(spec.origin).parent / "data").glob(f"{name}.*"))
    return Image.open(path).convert("RGB")


PROMPT = "USER : <|vision_start|><|image_pad|><|vision_end|> what is in this image ? ASSISTANT :"


@pytest.mark.parametrize("name", PHOTOS)
def test_real_structure_on_real_photos(real_structure: Qwen3VLAdapter, name: str) -> None:
    """The checkpoints' blocks and DeepStack layers, patch 16, 48 x 48 learned positions, their processor settings,
    a real photo: the grid follows the resizing rule, the default tap (the last block) equals a recomputation,
    and a pruned prompt equals the stock language model fed by hand (kept tokens and their 3 DeepStack levels)."""
    adapter = real_structure
    last = adapter.vision_depth() - 1  # 23 of 24 blocks (2B, 4B), 26 of 27 (8B)
    image = photo(name)
    batch = adapter.prepare([image], [PROMPT])
    rows, cols = smart_resize(image.height, image.width)
    assert batch["image_grid_thw"].tolist() == [[1, rows // 16, cols // 16]]
    assert adapter.tap_index(FocalSignificance()) == last
    _, summaries = adapter.encode_images(batch, FocalSignificance())
    assert summaries is not None
    [expected] = expected_received(adapter, batch, last)
    torch.testing.assert_close(summaries[0].received, expected)
    inputs = adapter.prefill_inputs(batch, pipeline("rank", 0.1))
    assert len(inputs.deepstack) == 3
    kept = inputs.images[0].indices
    torch.testing.assert_close(adapter.prefill_logits(inputs), hand_fed_logits(adapter, batch, kept))


def test_real_structure_keeping_everything_is_the_stock_model(real_structure: Qwen3VLAdapter) -> None:
    batch = real_structure.prepare([photo("coffee")], [PROMPT])
    with torch.no_grad():
        stock = real_structure.model(**batch).logits
    inputs = real_structure.prefill_inputs(batch, pipeline())
    torch.testing.assert_close(real_structure.prefill_logits(inputs), stock)
