"""Every registered method preset (``conf/method/``, as ``method=<name>`` composes it) on every tiny family,
batched with left padding: each sample of the batch keeps the tokens, and generates the tokens, it does alone.

The language models are deepened to 4 layers (as for the in-LLM tests) so that every in-LLM preset's boundaries
fit; on encoders without [CLS] (Qwen2-VL, LLaVA-OneVision's SigLIP) a preset's ``significance=cls`` becomes
``received``, the stand-in its strategy reads itself there."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR, choices
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline
from tests.models.conftest import example_batch
from tests.models.families import contract_of

NEW_TOKENS = 2


def batch_of(name: str, adapter: TargetModel, samples: list[int]) -> Mapping[str, torch.Tensor]:
    return example_batch(name, adapter, samples)


def method_pipeline(method: str, has_cls: bool) -> PruningPipeline:
    overrides = [f"method={method}", "keep=0.25", "stage=validate"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=overrides)
        if not has_cls and str(cfg.significance._target_).endswith(".ClsSignificance"):
            cfg = compose(config_name="train_eval", overrides=[*overrides, "significance=received"])
    return PruningPipeline.from_config(cfg)


def encoder_has_cls(name: str) -> bool:
    """Whether the family reads [CLS] attention, as its contract hook says (``significance=cls`` not refused)."""
    return "cls" not in contract_of(name).unsupported_sources


@pytest.mark.parametrize("method", choices("method"))
@torch.no_grad()
def test_every_method_preset_runs_batched_as_each_sample_alone(
    deep_family: tuple[str, TargetModel], method: str
) -> None:
    name, adapter = deep_family
    pipeline = method_pipeline(method, has_cls=encoder_has_cls(name))
    batched = adapter.generate(batch_of(name, adapter, [0, 1]), pipeline, max_new_tokens=NEW_TOKENS)
    assert batched.tokens.shape[0] == 2
    for sample in range(2):
        alone = adapter.generate(batch_of(name, adapter, [sample]), pipeline, max_new_tokens=NEW_TOKENS)
        [image] = alone.inputs.images
        assert torch.equal(batched.inputs.images[sample].indices, image.indices)
        torch.testing.assert_close(batched.inputs.images[sample].embeddings, image.embeddings, rtol=1e-4, atol=1e-5)
        assert int(batched.inputs.visual_tokens[sample]) == int(alone.inputs.visual_tokens[0])
        assert batched.layer_cache_lengths[-1] >= alone.layer_cache_lengths[-1]
        # A batch decodes until every sample has stopped: a sample that stopped earlier is padded after its end.
        length = alone.tokens.shape[1]
        assert torch.equal(batched.tokens[sample, :length], alone.tokens[0])
        tokenizer = adapter.processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if length < batched.tokens.shape[1]:
            assert int(alone.tokens[0, -1]) == tokenizer.eos_token_id
            assert bool((batched.tokens[sample, length:] == pad).all())
