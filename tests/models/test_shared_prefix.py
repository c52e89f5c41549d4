"""The shared image prefix (:mod:`fopru.models.shared_prefix`): the same logits and tokens as the unshared prefill,
on every tiny family, for batches where images repeat and where they do not, pruned and unpruned."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from fopru.components import choices, load
from fopru.errors import ConfigError
from fopru.llm_pruning.base import LLMPruning
from fopru.models.base import TargetModel
from fopru.models.inputs import LanguageInputs
from fopru.models.shared_prefix import shared_prefix_switch, split_shared_prefix
from fopru.pipeline import PruningPipeline
from tests.models.conftest import TINY_MODELS, fixture_module, make_image, make_pipeline
from tests.models.families import contract_of
from tests.models.test_contract import loaded

#: (image seed, prompt) per row: images 0 and 1 repeat with different questions, image 2 is alone; one question
#: (image 0, prompt 1) asked twice.
REPEATED = [(0, 0), (1, 1), (0, 1), (0, 0), (1, 0), (2, 1), (0, 1)]
DISTINCT = [(0, 0), (1, 1), (2, 0)]
CASES = [("none", 1.0), ("rank", 0.25)]


def batch_of(name: str, adapter: TargetModel, rows: list[tuple[int, int]]) -> Mapping[str, torch.Tensor]:
    module = fixture_module(name)
    sizes, prompts = module.EXAMPLE_SIZES, module.EXAMPLE_PROMPTS
    images = [make_image(seed, *sizes[seed % len(sizes)]) for seed, _ in rows]
    return adapter.prepare(images, [prompts[prompt] for _, prompt in rows])


@pytest.fixture
def switched_off() -> Iterator[list[TargetModel]]:
    """Adapters a test turns the switch off on (loaded once for the suite): turned back on afterwards."""
    touched: list[TargetModel] = []
    yield touched
    for adapter in touched:
        adapter.shared_prefix = True


def unshared(adapter: TargetModel, touched: list[TargetModel]) -> TargetModel:
    touched.append(adapter)
    adapter.shared_prefix = False
    return adapter


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize(("strategy", "keep"), CASES)
@pytest.mark.parametrize("rows", [REPEATED, DISTINCT], ids=["repeated", "distinct"])
def test_shared_prefill_equals_the_unshared_one(
    name: str, strategy: str, keep: float, rows: list[tuple[int, int]], switched_off: list[TargetModel]
) -> None:
    adapter = loaded(name)
    pipeline = make_pipeline(strategy, keep=keep, positions=contract_of(name).run_positions)
    batch = batch_of(name, adapter, rows)
    inputs = adapter.prefill_inputs(batch, pipeline)
    split = split_shared_prefix(inputs)
    if rows is DISTINCT:
        assert split is None  # nothing to share: the batch is prefilled as it is
    elif adapter.splits_prefill:
        assert split is not None
        assert split.prefix.inputs_embeds.shape[0] < len(rows)  # fewer prefix rows than rows: the work is shared
    with torch.no_grad():
        if adapter.splits_prefill:
            from transformers import DynamicCache

            shared, _ = adapter.shared_prefill(inputs, DynamicCache())
            whole = adapter.prefill_forward(inputs, DynamicCache(), logits_to_keep=1)
            torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-4)
    assert adapter.shares_prefix(pipeline) == adapter.splits_prefill
    ours = adapter.generate(batch, pipeline, max_new_tokens=4)
    theirs = unshared(adapter, switched_off).generate(batch, pipeline, max_new_tokens=4)
    assert torch.equal(ours.tokens, theirs.tokens)
    assert ours.texts == theirs.texts


def test_only_qwen3_vl_opts_out_among_the_tiny_families() -> None:
    """DeepStack adds features past the embeddings at the visual positions, which a remainder's stock forward
    would not see: the family prefills whole, whatever the switch."""
    opted_out = {name for name in TINY_MODELS if not loaded(name).splits_prefill}
    assert opted_out == {"tiny_qwen3_vl"}
    adapter = loaded("tiny_qwen3_vl")
    assert adapter.shared_prefix and not adapter.shares_prefix(make_pipeline("rank"))


def _forbid_sharing(adapter: TargetModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> object:
        raise AssertionError("the shared prefill ran")

    monkeypatch.setattr(adapter, "shared_prefill", refuse)


def test_text_guided_strategies_do_not_share(monkeypatch: pytest.MonkeyPatch) -> None:
    text_guided = [
        name
        for name in choices("strategy")
        if make_pipeline(name).request.text  # read from the registry: whatever reads the prompt
    ]
    assert text_guided, "no registered strategy reads the prompt text"
    adapter = loaded("tiny_llava")
    _forbid_sharing(adapter, monkeypatch)
    batch = batch_of("tiny_llava", adapter, REPEATED)
    for name in text_guided:
        pipeline = make_pipeline(name)
        assert not adapter.shares_prefix(pipeline)
        adapter.generate(batch, pipeline, max_new_tokens=2)


def test_in_llm_pruning_does_not_share(monkeypatch: pytest.MonkeyPatch) -> None:
    active = [name for name in choices("llm_pruning") if load("llm_pruning", name, LLMPruning).active]
    assert active
    adapter = loaded("tiny_llava")
    _forbid_sharing(adapter, monkeypatch)
    batch = batch_of("tiny_llava", adapter, REPEATED)
    base = make_pipeline("rank")
    for name in active:
        pipeline = PruningPipeline(
            base.significance, base.strategy, base.reorder, base.budget, load("llm_pruning", name, LLMPruning)
        )
        assert not adapter.shares_prefix(pipeline)
    adapter.generate(batch, pipeline, max_new_tokens=2)


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch, switched_off: list[TargetModel]) -> None:
    adapter = loaded("tiny_llava")
    pipeline = make_pipeline("rank")
    assert adapter.shares_prefix(pipeline)
    unshared(adapter, switched_off)
    assert not adapter.shares_prefix(pipeline)
    _forbid_sharing(adapter, monkeypatch)
    adapter.generate(batch_of("tiny_llava", adapter, REPEATED), pipeline, max_new_tokens=2)
    assert shared_prefix_switch(False) is False
    with pytest.raises(ConfigError, match="shared_prefix='no' must be true or false"):
        shared_prefix_switch("no")


def _inputs(rows: list[list[int]], visual: list[list[bool]]) -> LanguageInputs:
    """Left-padded inputs whose token embeddings are the given integers (width 2), positions 0.. per row."""
    length = max(len(row) for row in rows)
    embeds = torch.zeros((len(rows), length, 2))
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    positions = torch.ones((1, len(rows), length), dtype=torch.long)
    visual_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for number, (row, flags) in enumerate(zip(rows, visual, strict=True)):
        pad = length - len(row)
        embeds[number, pad:] = torch.tensor(row, dtype=torch.float32)[:, None]
        mask[number, pad:] = 1
        positions[0, number, pad:] = torch.arange(len(row))
        visual_mask[number, pad:] = torch.tensor(flags)
    counts = visual_mask.sum(dim=1)
    return LanguageInputs(embeds, mask, positions, counts, (), (1,) * len(rows), visual_mask)


def test_the_split_by_hand() -> None:
    """Rows 0 and 2 share system token 1, image tokens 7 7 and question word 3; row 1 has another image; row 3 shares
    only the first of row 0's image tokens (an image pruned otherwise), so it stays alone."""
    v = [False, True, True, False, False]
    inputs = _inputs(
        [[1, 7, 7, 3, 4], [1, 8, 8, 3], [1, 7, 7, 3, 5, 6], [1, 7, 9, 3]],
        [v, v[:4], [*v, False], v[:4]],
    )
    assert split_shared_prefix(inputs) is None  # 3 prefixes of 4 and 4 remainders of 2 > 0.8 of 4 rows of 6
    split = split_shared_prefix(inputs, max_cost=1.0)
    assert split is not None
    assert split.group_of_row.tolist() == [0, 1, 0, 2]
    # Prefixes: group 0 = [1 7 7 3] (common to rows 0 and 2), groups 1 and 2 keep their last token out.
    prefix = split.prefix
    assert prefix.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]
    assert prefix.inputs_embeds[:, :, 0].tolist() == [[1, 7, 7, 3], [0, 1, 8, 8], [0, 1, 7, 9]]
    assert prefix.position_ids[0].tolist() == [[0, 1, 2, 3], [1, 0, 1, 2], [1, 0, 1, 2]]
    # Remainders, left-padded: row 0 [4], row 1 [3], row 2 [5 6], row 3 [3]; positions continue the prefix.
    assert split.suffix_embeds[:, :, 0].tolist() == [[0, 4], [0, 3], [5, 6], [0, 3]]
    assert split.suffix_positions[0].tolist() == [[1, 4], [1, 3], [4, 5], [1, 3]]
    assert split.attention_mask.tolist() == [
        [1, 1, 1, 1, 0, 1],
        [0, 1, 1, 1, 0, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0, 1],
    ]


def test_no_split_without_repeats_or_visual_tokens() -> None:
    v = [False, True, False]
    assert split_shared_prefix(_inputs([[1, 7, 3], [1, 8, 3]], [v, v]), max_cost=1.0) is None
    text_only = [False, False, False]
    assert split_shared_prefix(_inputs([[1, 2, 3], [1, 2, 3]], [text_only, text_only]), max_cost=1.0) is None
    # The same image twice: 1 prefix of 2 + 2 remainders of 1 = 4 tokens, against 2 rows of 3.
    shared = split_shared_prefix(_inputs([[1, 7, 3], [1, 7, 4]], [v, v]))
    assert shared is not None and shared.group_of_row.tolist() == [0, 0]
    assert split_shared_prefix(_inputs([[1, 7, 3], [1, 7, 4]], [v, v]), max_cost=0.6) is None
