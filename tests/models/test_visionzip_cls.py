"""VisionZip on LLaVA-1.5 (the tiny fixture) sends [CLS] to the language model as its released code does: the
visual tokens equal the released algorithm run on the stock tower's eager attention, keys and hidden states."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR
from fopru.models.llava import LlavaAdapter
from fopru.pipeline import PruningPipeline
from tests.models.conftest import make_image
from tests.strategies.test_official import visionzip_released_sequence

PROMPTS = ["USER: <image>\nwhat is the shape in this image ? ASSISTANT:", "USER: <image>\nwhat color ? ASSISTANT:"]


def tiny_llava(attn_implementation: str) -> LlavaAdapter:
    config = OmegaConf.load(CONFIG_DIR / "model" / "tiny_llava.yaml")
    config.attn_implementation = attn_implementation
    built = instantiate(config)
    assert isinstance(built, LlavaAdapter)
    return built.load()  # type: ignore[return-value]


def visionzip(keep: float, *overrides: str) -> PruningPipeline:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["method=visionzip", f"keep={keep}", *overrides])
    return PruningPipeline.from_config(cfg)


def released_tokens(eager: LlavaAdapter, pixel_values: torch.Tensor, dominant: int, contextual: int) -> list:
    """Per image, (kept patch positions, projected tokens) of the released algorithm on the stock tower."""
    tower = eager.model.model.vision_tower
    layer = tower.encoder.layers[-2]  # vision_feature_layer -2: its output is hidden_states[-2]
    captured: list[torch.Tensor] = []
    hook = layer.self_attn.k_proj.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with torch.no_grad():
            out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        hook.remove()
    heads = tower.config.num_attention_heads
    cls_attention = out.attentions[-2][:, :, 0, 1:].sum(dim=1)  # summed over heads, as released
    hidden = out.hidden_states[-2]
    results = []
    for image in range(pixel_values.shape[0]):
        positions, tokens = visionzip_released_sequence(
            cls_attention[image], captured[0][image], hidden[image], dominant, contextual, heads=heads
        )
        with torch.no_grad():
            results.append((positions, eager.model.model.multi_modal_projector(tokens)))
    return results


@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_visionzip_sends_cls_first_as_the_released_code(keep: float) -> None:
    adapter, eager = tiny_llava("sdpa"), tiny_llava("eager")
    batch = adapter.prepare([make_image(0), make_image(1)], PROMPTS)
    pipeline = visionzip(keep)
    count = pipeline.budget.count(36, 36)
    dominant, contextual = pipeline.strategy.split(count)  # type: ignore[attr-defined]
    with torch.no_grad():
        inputs = adapter.prefill_inputs(batch, pipeline)
    assert inputs.visual_tokens.tolist() == [count, count]  # [CLS] counts in the budget
    expected = released_tokens(eager, batch["pixel_values"], dominant, contextual)
    for image, (positions, tokens) in zip(inputs.images, expected, strict=True):
        assert image.leading_cls and image.indices.tolist() == positions
        torch.testing.assert_close(image.embeddings, tokens, rtol=1e-3, atol=1e-4)  # sdpa against eager


def test_without_cls_every_dominant_token_is_a_patch() -> None:
    adapter = tiny_llava("sdpa")
    batch = adapter.prepare([make_image(0)], PROMPTS[:1])
    with torch.no_grad():
        inputs = adapter.prefill_inputs(batch, visionzip(0.25, "strategy.keep_cls=false"))
    image = inputs.images[0]
    assert not image.leading_cls and image.count == len(image.indices) == 9
