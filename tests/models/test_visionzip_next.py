"""VisionZip on LLaVA-NeXT (the tiny fixture), against its released code: every crop pruned on its own from the
stock tower's eager attention, keys and hidden states, projected and arranged as released (``anyres=crops``), or
today's split per grid of the unpadded packed layout with newlines (``anyres=grids``)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from fopru.components import CONFIG_DIR
from fopru.efficiency import counted_flops
from fopru.errors import ConfigError
from fopru.models.inputs import Generation
from fopru.models.llava_next import LlavaNextAdapter
from fopru.pipeline import PruningPipeline
from tests.models.conftest import make_image
from tests.strategies.test_official import visionzip_released, visionzip_released_anyres, visionzip_released_sequence

PROMPTS = ("USER: <image> what is the shape in this image ? ASSISTANT:", "<image> color ?")
SIZES = ((40, 70), (90, 50))  # (height, width): 1 x 2 tiles, 2 x 1 tiles


def tiny_next(attn_implementation: str) -> LlavaNextAdapter:
    config = OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava_next.yaml")
    config.attn_implementation = attn_implementation
    built = instantiate(config)
    assert isinstance(built, LlavaNextAdapter)
    return built.load()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def adapters() -> tuple[LlavaNextAdapter, LlavaNextAdapter]:
    return tiny_next("sdpa"), tiny_next("eager")


def visionzip(keep: float, *overrides: str) -> PruningPipeline:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["method=visionzip", f"keep={keep}", *overrides])
    return PruningPipeline.from_config(cfg)


def batch_of(adapter: LlavaNextAdapter, samples: list[int]) -> Mapping[str, torch.Tensor]:
    images = [make_image(sample, width=SIZES[sample][1], height=SIZES[sample][0]) for sample in samples]
    return adapter.prepare(images, [PROMPTS[sample] for sample in samples])


def stock_crops(eager: LlavaNextAdapter, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stock tower on an image's crops: (C, N) [CLS] attention summed over heads, (C, 1 + N, H * h) keys and
    (C, 1 + N, D) hidden states of layer -2 (``vision_feature_layer``), as the released code reads them."""
    tower = eager.model.model.vision_tower
    captured: list[torch.Tensor] = []
    hook = tower.encoder.layers[-2].self_attn.k_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            out = tower(crops, output_hidden_states=True, output_attentions=True)
    finally:
        hook.remove()
    return out.attentions[-2][:, :, 0, 1:].sum(dim=1), captured[0], out.hidden_states[-2]


def released_image(
    eager: LlavaNextAdapter, crops: torch.Tensor, image_size: torch.Tensor, dominant: int, contextual: int
) -> torch.Tensor:
    """One image's visual tokens as the released code sends them: VisionZip per crop, projected, arranged."""
    config = eager.model.config
    cls, keys, hidden = stock_crops(eager, crops)
    heads = config.vision_config.num_attention_heads
    outputs, keep_idx = [], []
    for crop in range(crops.shape[0]):
        patches, tokens = visionzip_released_sequence(
            cls[crop], keys[crop], hidden[crop], dominant, contextual, heads=heads
        )
        outputs.append(tokens)
        kept_dominant = sorted(patches[: dominant - 1])
        keep_idx.append(torch.tensor([0, *[patch + 1 for patch in kept_dominant]]))
    with torch.no_grad():
        projected = eager.model.model.multi_modal_projector(torch.stack(outputs))
    height, width = get_anyres_image_grid_shape(
        image_size.tolist(), config.image_grid_pinpoints, config.vision_config.image_size
    )
    side = config.vision_config.image_size // config.vision_config.patch_size
    return visionzip_released_anyres(projected, torch.stack(keep_idx), width, height, (side, side))


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_visionzip_on_llava_next_sends_the_released_tokens(
    adapters: tuple[LlavaNextAdapter, LlavaNextAdapter], keep: float
) -> None:
    adapter, eager = adapters
    batch = batch_of(adapter, [0, 1])
    pipeline = visionzip(keep)
    per_crop = pipeline.budget.count(36, 36)  # keep of every crop's 6 x 6 patches, [CLS] included
    dominant, contextual = pipeline.strategy.split(per_crop)  # type: ignore[attr-defined]
    assert contextual > 0
    with torch.no_grad():
        inputs = adapter.prefill_inputs(batch, pipeline)
    counts = adapter.crop_counts(batch["image_sizes"])
    assert inputs.visual_tokens.tolist() == [count * per_crop for count in counts]  # crops x (dominant + contextual)
    for image, kept in enumerate(inputs.images):
        crops = batch["pixel_values"][image, : counts[image]]
        expected = released_image(eager, crops, batch["image_sizes"][image], dominant, contextual)
        assert kept.num_tokens == adapter.packing(counts[image], batch["image_sizes"][image]).length
        torch.testing.assert_close(kept.embeddings, expected, rtol=1e-3, atol=1e-4)  # sdpa against eager
    logits = adapter.prefill_logits(inputs)
    assert bool(torch.isfinite(logits).all())


def test_visionzip_crops_refuse_original_positions(adapters: tuple[LlavaNextAdapter, LlavaNextAdapter]) -> None:
    adapter, _ = adapters
    with pytest.raises(ConfigError, match=r"anyres=crops.*'compact' or 'auto', got 'original'"):
        adapter.prefill_inputs(batch_of(adapter, [0]), visionzip(0.25, "reorder.positions=original"))
    # The packed layout keeps its offsets.
    adapter.prefill_inputs(
        batch_of(adapter, [0]), visionzip(0.25, "reorder.positions=original", "strategy.anyres=grids")
    )


def test_visionzip_grids_prunes_the_unpadded_packed_grids(adapters: tuple[LlavaNextAdapter, LlavaNextAdapter]) -> None:
    # anyres=grids: a dominant/contextual split on the base grid and on the unpadded tile grid, no [CLS], the
    # packed newlines after the rows that keep a token (as before per-crop pruning existed).
    adapter, eager = adapters
    batch = batch_of(adapter, [0])  # 40 x 70: base 6 x 6, tiles 1 x 2 unpadded to a 6 x 10 grid (columns 1..10)
    pipeline = visionzip(0.25, "strategy.anyres=grids")
    with torch.no_grad():
        (kept,) = adapter.prefill_inputs(batch, pipeline).images
    packing = adapter.packing(3, batch["image_sizes"][0])
    cls, keys, hidden = stock_crops(eager, batch["pixel_values"][0, :3])
    # Crop-major patches into the packed (unpadded) order.
    cls_packed, keys_packed, hidden_packed = (
        scores.flatten(0, 1)[packing.sources] for scores in (cls, keys[:, 1:], hidden[:, 1:])
    )
    strategy = pipeline.strategy
    heads = eager.model.config.vision_config.num_attention_heads
    tokens, positions = [], []
    for offset, size in ((0, 36), (36, 60)):
        dominant, contextual = strategy.split(pipeline.budget.count(size, 96))  # type: ignore[attr-defined]
        span = slice(offset, offset + size)
        where, merged = visionzip_released(
            cls_packed[span], keys_packed[span], hidden_packed[span], dominant, contextual, heads=heads
        )
        tokens.append(merged)
        positions += [offset + index for index in where]
    with torch.no_grad():
        projected = eager.model.model.multi_modal_projector(torch.cat(tokens))
    grid_tokens = ~torch.isin(kept.indices, packing.newlines)
    assert kept.indices[grid_tokens].tolist() == packing.positions[positions].tolist()
    torch.testing.assert_close(kept.embeddings[grid_tokens], projected, rtol=1e-3, atol=1e-4)
    assert bool((kept.embeddings[~grid_tokens] == adapter.model.model.image_newline).all())


@pytest.mark.parametrize("anyres", ["crops", "grids"])
@pytest.mark.parametrize("sample", [0, 1])
def test_visionzip_flops_equal_a_counted_generation(
    adapters: tuple[LlavaNextAdapter, LlavaNextAdapter], anyres: str, sample: int
) -> None:
    adapter, _ = adapters
    batch = batch_of(adapter, [sample])
    pipeline = visionzip(0.25, f"strategy.anyres={anyres}")
    generations: list[Generation] = []
    counted = counted_flops(lambda: generations.append(adapter.generate(batch, pipeline, max_new_tokens=2)))
    [breakdown] = adapter.flops(batch, generations[0].inputs, pipeline)
    assert breakdown.total(generations[0].tokens.shape[1]) == counted
