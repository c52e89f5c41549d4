"""The adapter contract on every model in the registry (``conf/model/``): what holds for any family.

The registry is the test list: every ``conf/model/tiny_*.yaml`` runs every check below, every hub checkpoint's
config the fast offline failure. A new family plugs in with, and only with:

1. ``conf/model/tiny_<name>.yaml`` (``checkpoint: tiny:<fixture>``) and its fixture ``fopru/models/tiny/<fixture>.py``
   (``build``, two ``EXAMPLE_PROMPTS`` / ``EXAMPLE_SIZES``);
2. ``tests/models/families/tiny_<name>.py`` defining ``CONTRACT``, an instance of a
   :class:`~tests.models.families.FamilyContract` subclass: ``stock_image_features`` (the stock model's features
   of one image, in placeholder order) and, where the defaults do not fit, ``hand_positions`` / ``stock_logits`` /
   ``stock_generate``, plus the position modes, significance sources and cases to run.

A tiny model without a hook fails here with a message saying what to add. The family's own test file keeps only what
is its own (packing rules, refusals, the tap's recomputation).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, choices
from fopru.efficiency import counted_flops
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.models.inputs import Generation
from fopru.models.loading import EMBEDDED_PREFIX, TINY_PREFIX
from fopru.reorder.base import Positions
from tests.models.conftest import TINY_MODELS, example_batch, fixture_module, make_pipeline
from tests.models.families import Case, FamilyContract, MissingHook, contract_of

#: Every registered model whose checkpoint comes from the hub (not a tiny fixture, not shipped with the package).
HUB_MODELS = [
    name
    for name in choices("model")
    if not str(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml").checkpoint).startswith(
        (TINY_PREFIX, EMBEDDED_PREFIX)
    )
]


def hook(name: str) -> FamilyContract:
    """The family's contract hook; a missing one fails the test with what to add."""
    try:
        return contract_of(name)
    except MissingHook as error:
        pytest.fail(str(error))


def per_family(cases: Callable[[FamilyContract], Iterable[tuple[Any, ...]]], arity: int) -> list[Any]:
    """``(name, *case)`` for every tiny model and every case its hook lists; one failing entry per missing hook."""
    params = []
    for name in TINY_MODELS:
        try:
            contract = contract_of(name)
        except MissingHook:
            params.append(pytest.param(name, *[None] * arity, id=f"{name}-no-hook"))
            continue
        for values in cases(contract):
            label = "-".join(describe(value) for value in values)
            params.append(pytest.param(name, *values, id=f"{name}-{label}"))
    return params


def describe(value: Any) -> str:
    if isinstance(value, Case):
        return f"{value.strategy}{value.keep}"
    if isinstance(value, list):
        return f"B{len(value)}"
    return str(value)


@functools.cache
def loaded(name: str) -> TargetModel:
    """The tiny model of ``conf/model/<name>.yaml``, loaded once for the whole suite."""
    built = instantiate(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))
    assert isinstance(built, TargetModel)
    return built.load()


def image_token_id(adapter: TargetModel) -> int:
    return int(adapter.model.config.image_token_id)


def pad_id(adapter: TargetModel) -> int:
    tokenizer = adapter.processor.tokenizer
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


# -- the registry --------------------------------------------------------------------------------------------------
def test_the_registry_has_tiny_and_hub_models() -> None:
    assert TINY_MODELS and HUB_MODELS


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_tiny_model_has_a_fixture_with_two_example_samples(name: str) -> None:
    module = fixture_module(name)
    assert callable(module.build)
    assert len(module.EXAMPLE_PROMPTS) == len(module.EXAMPLE_SIZES) == 2


@pytest.mark.parametrize("name", TINY_MODELS)
def test_every_tiny_model_has_a_contract_hook(name: str) -> None:
    contract = hook(name)
    assert contract.positions and contract.sources and contract.hand_fed and contract.kv and contract.batched
    registered = set(choices("significance"))
    assert set(contract.sources) | set(contract.unsupported_sources) <= registered
    assert not set(contract.sources) & set(contract.unsupported_sources)


def test_a_tiny_model_without_a_hook_is_told_what_to_add() -> None:
    with pytest.raises(MissingHook, match=re.escape("add tests/models/families/tiny_nope.py defining CONTRACT")):
        contract_of("tiny_nope")


@pytest.mark.parametrize("name", HUB_MODELS)
def test_an_unreachable_hub_checkpoint_fails_fast_with_its_name(name: str) -> None:
    config = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    config.device = "cpu"
    adapter = instantiate(config)
    assert isinstance(adapter, TargetModel)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(f"checkpoint '{config.checkpoint}' could not be reached")):
        adapter.load()
    assert time.monotonic() - started < 10


# -- 1. keep-all is the stock model ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "samples"), per_family(lambda contract: [([0],), ([0, 1],)], 1))
def test_keep_all_equals_stock_logits_and_generation(name: str, samples: list[int]) -> None:
    contract, adapter = hook(name), loaded(name)
    batch = example_batch(name, adapter, samples)
    if len(samples) == 2:
        assert bool((batch["attention_mask"] == 0).any()), "the batch should exercise left padding"
    keep_all = make_pipeline("none", keep=1.0, positions=contract.run_positions)
    inputs = adapter.prefill_inputs(batch, keep_all)
    assert torch.equal(inputs.attention_mask, batch["attention_mask"])
    placeholders = (batch["input_ids"] == image_token_id(adapter)).sum(dim=1)
    assert torch.equal(inputs.visual_tokens, placeholders)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(adapter.prefill_logits(inputs)[real], contract.stock_logits(adapter, batch)[real])
    ours = adapter.generate(batch, keep_all, max_new_tokens=contract.new_tokens)
    assert torch.equal(ours.tokens, contract.stock_generate(adapter, batch, contract.new_tokens))


# -- 2. pruned logits equal the stock language model fed by hand ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "case", "positions"),
    per_family(lambda contract: [(case, mode) for case in contract.hand_fed for mode in contract.positions], 2),
)
def test_pruned_logits_equal_a_hand_fed_language_model(name: str, case: Case, positions: Positions) -> None:
    contract, adapter = hook(name), loaded(name)
    batch = example_batch(name, adapter, [contract.hand_fed_sample])
    inputs = adapter.prefill_inputs(batch, make_pipeline(case.strategy, keep=case.keep, positions=positions))
    (kept,) = inputs.images
    assert 0 < kept.indices.shape[0] < kept.num_tokens
    assert bool((kept.indices.diff() > 0).all())  # original order: a subsequence of the image's tokens
    model = adapter.model
    features = contract.stock_image_features(adapter, batch)
    ids = batch["input_ids"][0]
    placeholders = (ids == image_token_id(adapter)).nonzero().flatten()
    start, stop = int(placeholders[0]), int(placeholders[-1]) + 1
    assert stop - start == placeholders.shape[0] == features.shape[0] == kept.num_tokens
    with torch.no_grad():
        text = model.get_input_embeddings()(ids)
        embeds = torch.cat([text[:start], features[kept.indices], text[stop:]])[None]
        columns = torch.cat([torch.arange(start), start + kept.indices, torch.arange(stop, ids.shape[0])])
        position_ids = contract.hand_positions(adapter, batch, columns, positions)
    expected = contract.hand_fed_logits(adapter, batch, embeds, position_ids, kept.indices, start)
    torch.testing.assert_close(adapter.prefill_logits(inputs)[0], expected)


# -- 3. the language model and its cache hold exactly the kept tokens ------------------------------------------------
@pytest.mark.parametrize(("name", "case"), per_family(lambda contract: [(case,) for case in contract.kv], 1))
def test_visual_tokens_and_kv_cache_hold_only_the_kept_tokens(name: str, case: Case) -> None:
    contract, adapter = hook(name), loaded(name)
    batch = example_batch(name, adapter, [contract.kv_sample])
    pipeline = make_pipeline(case.strategy, keep=case.keep, positions=contract.run_positions)
    generation = adapter.generate(batch, pipeline, max_new_tokens=2)
    (kept,) = generation.inputs.images
    count = kept.embeddings.shape[0]
    if case.kept is not None:
        assert count == case.kept
    assert 0 < count < kept.num_tokens == int((batch["input_ids"] == image_token_id(adapter)).sum())
    text = int((batch["input_ids"] != image_token_id(adapter)).sum())
    assert generation.inputs.visual_tokens.tolist() == [count]
    assert generation.inputs.visual_mask is not None and int(generation.inputs.visual_mask.sum()) == count
    assert int(generation.inputs.attention_mask.sum()) == text + count
    assert generation.prompt_cache_length == text + count


# -- 4. batching does not change the answer ----------------------------------------------------------------------
@pytest.mark.parametrize(("name", "case"), per_family(lambda contract: [(case,) for case in contract.batched], 1))
def test_a_pruned_batch_generates_what_each_sample_generates_alone(name: str, case: Case) -> None:
    contract, adapter = hook(name), loaded(name)
    pipeline = make_pipeline(case.strategy, keep=case.keep, positions=contract.run_positions)
    samples = list(contract.batched_samples)
    together = adapter.generate(example_batch(name, adapter, samples), pipeline, max_new_tokens=contract.new_tokens)
    for position, sample in enumerate(samples):
        alone = adapter.generate(example_batch(name, adapter, [sample]), pipeline, max_new_tokens=contract.new_tokens)
        length = alone.tokens.shape[1]
        assert torch.equal(together.tokens[position, :length], alone.tokens[0])
        assert bool((together.tokens[position, length:] == pad_id(adapter)).all())
        assert int(together.inputs.visual_tokens[position]) == int(alone.inputs.visual_tokens[0])
        assert torch.equal(together.inputs.images[position].indices, alone.inputs.images[0].indices)


# -- 5. every registered strategy with every source the family supports -------------------------------------------
@pytest.mark.parametrize(
    ("name", "strategy", "significance"),
    per_family(lambda contract: [(s, source) for s in choices("strategy") for source in contract.sources], 2),
)
def test_every_strategy_and_source_runs_batched(name: str, strategy: str, significance: str) -> None:
    """A batch of the two examples (different prompts; different image sizes where the family tiles or resizes)."""
    contract, adapter = hook(name), loaded(name)
    pipeline = make_pipeline(strategy, keep=0.25, significance=significance, positions=contract.run_positions)
    generation = adapter.generate(example_batch(name, adapter, [0, 1]), pipeline, max_new_tokens=2)
    assert generation.tokens.shape[0] == 2
    kept = [image.embeddings.shape[0] for image in generation.inputs.images]
    assert generation.inputs.visual_tokens.tolist() == kept
    for count, image in zip(kept, generation.inputs.images, strict=True):
        assert contract.min_visual_tokens <= count <= image.num_tokens


@pytest.mark.parametrize(
    ("name", "significance"), per_family(lambda contract: [(source,) for source in choices("significance")], 1)
)
def test_every_registered_source_runs_batched_or_is_refused_by_name(name: str, significance: str) -> None:
    """Every source in ``conf/significance/``: the family runs it, or refuses it with a clear error."""
    contract, adapter = hook(name), loaded(name)
    pipeline = make_pipeline("rank", keep=0.25, significance=significance, positions=contract.run_positions)
    batch = example_batch(name, adapter, [0, 1])
    if significance in contract.unsupported_sources:
        with pytest.raises(ConfigError, match=contract.unsupported_sources[significance]):
            adapter.generate(batch, pipeline, max_new_tokens=2)
        return
    generation = adapter.generate(batch, pipeline, max_new_tokens=2)
    kept = [image.embeddings.shape[0] for image in generation.inputs.images]
    assert generation.inputs.visual_tokens.tolist() == kept
    for count, image in zip(kept, generation.inputs.images, strict=True):
        assert contract.min_visual_tokens <= count < image.num_tokens


# -- 6. analytic FLOPs are what the generation computes -----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "strategy", "sample"),
    per_family(lambda contract: [(s, sample) for s in choices("strategy") for sample in contract.flops_samples], 2),
)
def test_analytic_flops_equal_a_counted_pruned_generation(name: str, strategy: str, sample: int) -> None:
    """Per request (B=1; a padded batch also computes its padding), against ``FlopCounterMode``."""
    contract, adapter = hook(name), loaded(name)
    significance = contract.flops_significance.get(strategy, "focal")
    new_tokens = contract.flops_tokens.get(strategy, contract.flops_default_tokens)
    batch = example_batch(name, adapter, [sample])
    pipeline = make_pipeline(strategy, keep=0.25, significance=significance, positions=contract.run_positions)
    generations: list[Generation] = []
    counted = counted_flops(lambda: generations.append(adapter.generate(batch, pipeline, max_new_tokens=new_tokens)))
    [breakdown] = adapter.flops(batch, generations[0].inputs, pipeline)
    assert breakdown.total(generations[0].tokens.shape[1]) == counted
