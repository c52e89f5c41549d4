"""In-LLM pruning on every tiny family, against stock transformers: eager attention, a masked full-sequence
reference run layer by layer without a cache, greedy decoding of that reference, and FlopCounterMode."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from fopru.components import choices, load
from fopru.efficiency import counted_flops
from fopru.llm_pruning import (
    DART,
    FastV,
    LLMPruning,
    NoLLMPruning,
    PyramidDrop,
    Recycled,
    SparseVLM,
    VisualTokenWithdrawal,
)
from fopru.models.base import TargetModel
from fopru.models.inputs import Generation, LanguageInputs
from fopru.models.staged import LastQueryAttention, _Stream
from fopru.pipeline import PruningPipeline
from tests.models.conftest import DEPTH, example_batch, make_pipeline

METHODS: list[LLMPruning] = [
    FastV(layer=1, keep=0.5),
    FastV(layer=2, keep=0.3),
    VisualTokenWithdrawal(layer=2),
    PyramidDrop(layers=(1, 2, 3), keep=0.125),
    PyramidDrop(layers=(1, 2, 3), keep=0.125, ranking="own", renumber=False),
    DART(layer=2, keep=0.5),
    SparseVLM(layers=(1, 2, 3), counts=(0.6, 0.4, 0.2), recycle=False),  # the masked reference adds no token
]
RECYCLING = SparseVLM(layers=(1, 2, 3), counts=(0.6, 0.4, 0.2))
NEW_TOKENS = 5


def batch_of(name: str, adapter: TargetModel, samples: list[int]) -> Mapping[str, torch.Tensor]:
    return example_batch(name, adapter, samples)


def assert_first_boundary_keeps_the_most_attended(
    deep_family: tuple[str, TargetModel], method: LLMPruning, ranked_by_layer: int
) -> None:
    """The visual tokens surviving ``method``'s first boundary are those the last token attends to most in the stock
    model's eager attention of layer index ``ranked_by_layer`` (heads averaged), ties toward the lower index."""
    name, adapter = deep_family
    batch = batch_of(name, adapter, [0, 1])
    generation = adapter.generate(batch, pipeline_with(method), max_new_tokens=1)
    inputs = generation.inputs
    assert inputs.visual_mask is not None
    rows = eager_last_rows(adapter, inputs)[ranked_by_layer]
    for sample in range(2):
        visual = inputs.visual_mask[sample].nonzero().flatten()
        kept = method.schedule(int(visual.numel()), DEPTH, make_pipeline().budget)[0].kept
        expected = visual[rows[sample, visual].argsort(descending=True, stable=True)[:kept]].sort().values
        present = generation.survivors[0][sample] & inputs.visual_mask[sample]
        assert torch.equal(present.nonzero().flatten(), expected)


def pipeline_with(method: LLMPruning) -> PruningPipeline:
    return replace(make_pipeline("none", keep=1.0, positions="original"), llm_pruning=method)


def rope_positions(adapter: TargetModel, positions: torch.Tensor) -> torch.Tensor:
    return positions[0] if positions.shape[0] == 1 else positions


def deepstack_arguments(inputs: LanguageInputs) -> dict[str, Any]:
    """What the stock language model takes to add Qwen3-VL's DeepStack features at the visual positions (nothing
    for families without DeepStack)."""
    if not inputs.deepstack:
        return {}
    assert inputs.visual_mask is not None
    visual = inputs.visual_mask & inputs.attention_mask.bool()
    return {"visual_pos_masks": visual, "deepstack_visual_embeds": [level[visual] for level in inputs.deepstack]}


def layer_inputs(hidden_states: tuple[torch.Tensor, ...], inputs: LanguageInputs) -> list[torch.Tensor]:
    """What enters each layer, from the stock model's recorded hidden states (the embeddings, then every layer's
    output): a layer's output plus its DeepStack level, where the family has one, as the stock forward adds it."""
    entering = [hidden_states[0]]
    for index, hidden in enumerate(hidden_states[1:]):
        entering.append(hidden + inputs.deepstack[index] if index < len(inputs.deepstack) else hidden)
    return entering


def reference_logits(
    adapter: TargetModel,
    inputs: LanguageInputs,
    generation: Generation,
    boundaries: tuple[int, ...],
    steps: int,
    renumber: bool = False,
) -> torch.Tensor:
    """Last-position logits of the stock layers run on the whole sequence (prompt + ``steps`` generated tokens)
    without a cache, each layer under an explicit 4-D mask hiding the prompt tokens dropped at earlier
    boundaries. ``renumber`` (1-D positions only): each layer numbers the prompt tokens it still sees 0, 1, ...
    and the generated tokens after them, as PyramidDrop's released code does."""
    language = adapter.model.model.language_model
    batch, length = inputs.attention_mask.shape
    generated = generation.tokens[:, :steps]
    embeds = torch.cat([inputs.inputs_embeds, language.embed_tokens(generated)], dim=1)
    real = torch.cat([inputs.attention_mask.bool(), torch.ones_like(generated, dtype=torch.bool)], dim=1)
    step_positions = inputs.next_position[None, :, None] + torch.arange(steps)[None, None]
    positions = torch.cat([inputs.position_ids, step_positions.expand(inputs.position_ids.shape[0], -1, -1)], dim=2)
    total = embeds.shape[1]
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    hidden = embeds
    for index, layer in enumerate(language.layers):
        keys = real.clone()
        for boundary, present in zip(boundaries, generation.survivors, strict=True):
            if index >= boundary:
                keys[:, :length] &= present
        layer_positions = positions
        if renumber and positions.shape[0] == 1:
            prompt = keys[:, :length]
            numbered = (prompt.cumsum(dim=1) - 1).clamp_min(0)
            after = prompt.sum(dim=1, keepdim=True) + torch.arange(steps)[None]
            layer_positions = torch.cat([numbered, after], dim=1)[None]
        rotary = language.rotary_emb(embeds, rope_positions(adapter, layer_positions))
        allowed = causal[None] & keys[:, None, :]
        mask = torch.zeros(batch, 1, total, total).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary)
        if index < len(inputs.deepstack):  # Qwen3-VL: DeepStack level i joins layer i's output at the visual tokens
            level = inputs.deepstack[index]
            hidden = hidden + torch.cat([level, level.new_zeros(batch, steps, level.shape[-1])], dim=1)
    logits: torch.Tensor = adapter.model.lm_head(language.norm(hidden[:, -1]))
    return logits


def eager_attentions(adapter: TargetModel, inputs: LanguageInputs) -> tuple[torch.Tensor, ...]:
    """Per layer, the stock language model's (B, H, L, L) eager attention weights."""
    language = adapter.model.model.language_model
    adapter.model.set_attn_implementation("eager")
    try:
        output = language(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=rope_positions(adapter, inputs.position_ids),
            output_attentions=True,
            **deepstack_arguments(inputs),
        )
    finally:
        adapter.model.set_attn_implementation("sdpa")
    return tuple(output.attentions)


def eager_last_rows(adapter: TargetModel, inputs: LanguageInputs) -> tuple[torch.Tensor, ...]:
    """Per layer, the head-averaged last row of the stock language model's eager attention weights."""
    return tuple(weights[:, :, -1].mean(dim=1) for weights in eager_attentions(adapter, inputs))


def instruction_of(inputs: LanguageInputs, sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A sample's visual positions and the real positions after its image (the instruction), ascending."""
    assert inputs.visual_mask is not None
    visual = inputs.visual_mask[sample].nonzero().flatten()
    real = inputs.attention_mask[sample].bool().nonzero().flatten()
    return visual, real[real > visual.max()]


@torch.no_grad()
def test_probe_rows_equal_eager_attention_and_leave_the_layer_unchanged(deep_family: tuple[str, TargetModel]) -> None:
    name, adapter = deep_family
    batch = batch_of(name, adapter, [0, 1])  # different prompt lengths: left padding
    inputs = adapter.prefill_inputs(batch, pipeline_with(NoLLMPruning()))
    language = adapter.model.model.language_model
    arguments: dict[str, Any] = {
        "inputs_embeds": inputs.inputs_embeds,
        "attention_mask": inputs.attention_mask,
        "position_ids": rope_positions(adapter, inputs.position_ids),
        **deepstack_arguments(inputs),
    }
    plain = language(**arguments).last_hidden_state
    expected = eager_last_rows(adapter, inputs)
    for layer in range(DEPTH):
        with LastQueryAttention(language.layers[layer].self_attn) as probe:
            probed = language(**arguments).last_hidden_state
        assert probe.rows is not None
        assert torch.equal(probed, plain)
        torch.testing.assert_close(probe.rows, expected[layer], rtol=1e-5, atol=1e-6)
        assert torch.allclose(probe.rows.sum(dim=1), torch.ones(2))


@torch.no_grad()
def test_keeping_every_token_equals_the_stock_path(deep_family: tuple[str, TargetModel]) -> None:
    """A boundary that keeps all tokens runs the staged layers; logits and tokens equal the stock forward's."""
    name, adapter = deep_family
    batch = batch_of(name, adapter, [0, 1])
    stock = adapter.generate(batch, pipeline_with(NoLLMPruning()), max_new_tokens=NEW_TOKENS)
    staged = adapter.generate(batch, pipeline_with(PyramidDrop(layers=(1, 3), ratio=1.0)), max_new_tokens=NEW_TOKENS)
    assert torch.equal(staged.tokens, stock.tokens)
    assert staged.layer_cache_lengths == stock.layer_cache_lengths == (stock.prompt_cache_length,) * DEPTH
    inputs = stock.inputs
    decoder = adapter.staged_decoder()
    cache_logits, _ = decoder.prefill(
        inputs.inputs_embeds,
        inputs.attention_mask,
        inputs.position_ids,
        inputs.visual_mask,  # type: ignore[arg-type]
        [(), ()],
        DynamicCache(),
        deepstack=inputs.deepstack,
    )
    expected = adapter.prefill_logits(inputs)[:, -1:]
    torch.testing.assert_close(cache_logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS, ids=lambda method: f"{type(method).__name__}-{vars(method)}")
@torch.no_grad()
def test_pruned_generation_equals_a_masked_reference(deep_family: tuple[str, TargetModel], method: LLMPruning) -> None:
    """Prefill logits, every decode step's greedy token and the per-layer cache lengths, batched with left padding,
    against the stock layers run on the full sequence with the dropped tokens masked out."""
    name, adapter = deep_family
    batch = batch_of(name, adapter, [0, 1])
    pipeline = pipeline_with(method)
    generation = adapter.generate(batch, pipeline, max_new_tokens=NEW_TOKENS)
    inputs = generation.inputs
    assert inputs.visual_mask is not None
    schedules = [method.schedule(int(count), DEPTH, pipeline.budget) for count in inputs.visual_tokens.tolist()]
    boundaries = tuple(drop.layer for drop in schedules[0])
    # Survivors: all text, and as many visual tokens as each boundary keeps.
    text = inputs.attention_mask.bool() & ~inputs.visual_mask
    for number, present in enumerate(generation.survivors):
        assert torch.equal(present & text, text)
        kept = (present & inputs.visual_mask).sum(dim=1).tolist()
        assert kept == [schedule[number].kept for schedule in schedules]
    # Cache lengths: layer i holds the left-padded longest sample of that layer.
    per_layer = [method.visual_per_layer(int(count), DEPTH, pipeline.budget) for count in inputs.visual_tokens]
    texts = inputs.text_tokens.tolist()
    expected_lengths = tuple(
        max(texts[sample] + per_layer[sample][layer] for sample in range(2)) for layer in range(DEPTH)
    )
    assert generation.layer_cache_lengths == expected_lengths
    # The prefill logits, then every greedy token of unfinished samples, equal the reference's.
    prefill_logits, _ = adapter.staged_decoder().prefill(
        inputs.inputs_embeds,
        inputs.attention_mask,
        inputs.position_ids,
        inputs.visual_mask,
        schedules,
        DynamicCache(),
        ranking=method.ranking,
        renumber=method.renumber,
        method=method,
        deepstack=inputs.deepstack,
    )
    renumber = method.renumber
    reference = reference_logits(adapter, inputs, generation, boundaries, 0, renumber)
    torch.testing.assert_close(prefill_logits[:, -1], reference, rtol=1e-4, atol=1e-5)
    eos = adapter.processor.tokenizer.eos_token_id
    finished = torch.zeros(2, dtype=torch.bool)
    for step in range(generation.tokens.shape[1]):
        expected = reference_logits(adapter, inputs, generation, boundaries, step, renumber).argmax(dim=-1)
        assert torch.equal(expected[~finished], generation.tokens[~finished, step])
        finished |= generation.tokens[:, step] == eos


@torch.no_grad()
def test_fastv_drops_the_visual_tokens_the_last_token_attends_least(deep_family: tuple[str, TargetModel]) -> None:
    """The survivors of a FastV boundary at layer 2 are the top visual tokens of the stock model's eager
    attention row of the last token in layer 2 (index 1), heads averaged."""
    assert_first_boundary_keeps_the_most_attended(deep_family, FastV(layer=2, keep=0.3), ranked_by_layer=1)


@torch.no_grad()
def test_pyramid_drop_ranks_with_the_next_layers_projections(deep_family: tuple[str, TargetModel]) -> None:
    """PyramidDrop's released ranking at its first boundary (before layer 2) scores the hidden states entering
    layer 2 with layer 2's own norm, projections and rotary embedding: that is the stock model's eager attention
    row of the last token in layer 2 (index 2), heads averaged, where FastV reads layer index 1."""
    assert_first_boundary_keeps_the_most_attended(deep_family, PyramidDrop(layers=(2, 3), keep=0.25), ranked_by_layer=2)


@pytest.mark.parametrize(
    "method",
    [METHODS[0], METHODS[2], METHODS[3], METHODS[4], METHODS[5], METHODS[6], RECYCLING],
    ids=["fastv", "vtw", "pyramid_drop", "pyramid_own", "dart", "sparsevlm", "sparsevlm-recycling"],
)
def test_analytic_flops_equal_a_counted_pruned_generation(
    deep_family: tuple[str, TargetModel], method: LLMPruning
) -> None:
    name, adapter = deep_family
    batch = batch_of(name, adapter, [1])
    pipeline = pipeline_with(method)
    generations: list[Generation] = []
    counted = counted_flops(lambda: generations.append(adapter.generate(batch, pipeline, max_new_tokens=3)))
    [breakdown] = adapter.flops(batch, generations[0].inputs, pipeline)
    assert breakdown.total(generations[0].tokens.shape[1]) == counted
    visual = int(generations[0].inputs.visual_tokens[0])
    per_layer = method.visual_per_layer(visual, DEPTH, pipeline.budget)
    assert breakdown.visual_tokens_mean == sum(per_layer) / DEPTH
    assert breakdown.visual_tokens_equivalent is not None
    assert min(per_layer) <= breakdown.visual_tokens_mean <= breakdown.visual_tokens_equivalent <= visual


@pytest.mark.parametrize("name", choices("llm_pruning"))
@torch.no_grad()
def test_every_registered_method_runs_batched(deep_family: tuple[str, TargetModel], name: str) -> None:
    """The registered configs as they are (run budget keep = 0.25) on a 4-layer language model, left-padded."""
    family_name, adapter = deep_family
    method = load("llm_pruning", name, LLMPruning)
    pipeline = replace(make_pipeline("none", keep=0.25, positions="original"), llm_pruning=method)
    generation = adapter.generate(batch_of(family_name, adapter, [0, 1]), pipeline, max_new_tokens=2)
    lengths = generation.layer_cache_lengths
    assert len(lengths) == DEPTH and list(lengths) == sorted(lengths, reverse=True)
    assert (lengths[-1] < lengths[0]) == method.active


@torch.no_grad()
def test_sparsevlm_keeps_what_its_raters_attend_to_in_stock_eager_attention(
    deep_family: tuple[str, TargetModel],
) -> None:
    """The survivors of a SparseVLM boundary at layer 2: raters chosen from the prompt's input embeddings (the
    official rule), their head-averaged rows of the stock model's eager attention of layer 2 (index 1), averaged
    over raters; the best visual tokens survive (batched, left-padded)."""
    name, adapter = deep_family
    method = SparseVLM(layers=(2,), counts=(0.4,))
    generation = adapter.generate(batch_of(name, adapter, [0, 1]), pipeline_with(method), max_new_tokens=1)
    inputs = generation.inputs
    attention = eager_attentions(adapter, inputs)[1].mean(dim=1)  # (B, L, L)
    for sample in range(2):
        visual, instruction = instruction_of(inputs, sample)
        embeds = inputs.inputs_embeds[sample].float()
        relation = (embeds[visual] @ embeds[instruction].T).softmax(dim=1).mean(dim=0)
        raters = instruction[relation > relation.mean()]
        scores = attention[sample][raters][:, visual].mean(dim=0)
        kept = method.schedule(int(visual.numel()), DEPTH, make_pipeline().budget)[0].kept
        expected = visual[scores.argsort(descending=True, stable=True)[:kept]].sort().values
        present = generation.survivors[0][sample] & inputs.visual_mask[sample]  # type: ignore[index]
        assert torch.equal(present.nonzero().flatten(), expected)


@torch.no_grad()
def test_dart_pivots_come_from_the_stock_layers_keys_and_states(deep_family: tuple[str, TargetModel]) -> None:
    """DART at layer 2 from the stock model: layer 1's keys rebuilt from its own projections and rotary embedding,
    the states of layer 1's output through the final norm; the official selection on them (``DART.choose``, checked
    against the code step by step in tests/llm_pruning/test_dart.py) gives the generation's survivors."""
    name, adapter = deep_family
    method = DART(layer=2, keep=0.5)
    generation = adapter.generate(batch_of(name, adapter, [0, 1]), pipeline_with(method), max_new_tokens=1)
    inputs = generation.inputs
    language = adapter.model.model.language_model
    recorded = language(
        inputs_embeds=inputs.inputs_embeds,
        attention_mask=inputs.attention_mask,
        position_ids=rope_positions(adapter, inputs.position_ids),
        output_hidden_states=True,
        **deepstack_arguments(inputs),
    ).hidden_states
    hidden = layer_inputs(recorded, inputs)
    attention = language.layers[1].self_attn
    projected = attention.k_proj(language.layers[1].input_layernorm(hidden[1]))
    keys = projected.view(*projected.shape[:2], -1, attention.head_dim)
    if hasattr(attention, "k_norm"):  # Qwen3 normalises each key head before the rotary embedding
        keys = attention.k_norm(keys)
    keys = keys.transpose(1, 2)
    cos, sin = language.rotary_emb(hidden[1], rope_positions(adapter, inputs.position_ids))
    _, keys = sys.modules[type(attention).__module__].apply_rotary_pos_emb(keys, keys, cos, sin)
    norms = keys.abs().sum(dim=-1).sum(dim=1)
    states = torch.nn.functional.normalize(language.norm(hidden[2]), dim=-1)
    for sample in range(2):
        visual, instruction = instruction_of(inputs, sample)
        [drop] = method.schedule(int(visual.numel()), DEPTH, make_pipeline().budget)
        per_pivot = (drop.kept - 4) // 8
        first = int(inputs.attention_mask[sample].argmax())
        expected = method.choose(norms[sample], states[sample], visual, instruction, per_pivot, first)
        present = generation.survivors[0][sample] & inputs.visual_mask[sample]  # type: ignore[index]
        assert torch.equal(present.nonzero().flatten(), expected)
        assert expected.numel() == drop.kept


@torch.no_grad()
def test_sparsevlm_recycling_batched_equals_each_sample_alone(deep_family: tuple[str, TargetModel]) -> None:
    """With recycled tokens inserted after the kept visual tokens (left-padded, per-sample counts), every layer's
    cache holds text + kept + recycled tokens, and the batch decodes what each sample decodes alone."""
    name, adapter = deep_family
    pipeline = pipeline_with(RECYCLING)
    together = adapter.generate(batch_of(name, adapter, [0, 1]), pipeline, max_new_tokens=NEW_TOKENS)
    inputs = together.inputs
    per_layer = [RECYCLING.visual_per_layer(int(count), DEPTH, pipeline.budget) for count in inputs.visual_tokens]
    drops = [RECYCLING.schedule(int(count), DEPTH, pipeline.budget) for count in inputs.visual_tokens]
    assert any(held > drop.kept for held, drop in zip(per_layer[0][1:], drops[0], strict=False))  # some recycled
    texts = inputs.text_tokens.tolist()
    assert together.layer_cache_lengths == tuple(
        max(texts[sample] + per_layer[sample][layer] for sample in range(2)) for layer in range(DEPTH)
    )
    for sample in range(2):
        alone = adapter.generate(batch_of(name, adapter, [sample]), pipeline, max_new_tokens=NEW_TOKENS)
        assert alone.layer_cache_lengths == tuple(texts[sample] + count for count in per_layer[sample])
        length = alone.tokens.shape[1]
        assert torch.equal(together.tokens[sample, :length], alone.tokens[0])
        for present, single in zip(together.survivors, alone.survivors, strict=True):
            width = single.shape[1]
            assert torch.equal(present[sample, -width:], single[0])


def test_recycled_tokens_enter_after_each_samples_last_visual_token() -> None:
    """Two left-padded samples (t text, v visual, . padding): [. t v v t] gets 2 recycled tokens r, s after its last
    visual token, [t v t t t] one; each takes its centre's position, counts as visual, has no prompt index."""
    present = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    visual = torch.tensor([[False, False, True, True, False], [False, True, False, False, False]])
    hidden = torch.arange(10.0).reshape(2, 5, 1)
    positions = torch.tensor([[[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]])
    stream = _Stream(hidden, positions, present, visual, visual & False, torch.arange(10).reshape(2, 5))
    recycled = [
        Recycled(torch.tensor([[-1.0], [-2.0]]), torch.tensor([2, 3])),
        Recycled(torch.tensor([[-3.0]]), torch.tensor([1])),
    ]
    out = stream.with_recycled(recycled, [torch.tensor([[1, 2]]), torch.tensor([[1]])])
    assert out.hidden[..., 0].tolist() == [[1.0, 2.0, 3.0, -1.0, -2.0, 4.0], [5.0, 6.0, -3.0, 7.0, 8.0, 9.0]]
    assert out.positions.tolist() == [[[0, 1, 2, 1, 2, 3], [0, 1, 1, 2, 3, 4]]]
    assert out.present.all()
    assert out.visual.tolist() == [[False, True, True, True, True, False], [False, True, True, False, False, False]]
    assert out.prompt_index.tolist() == [[1, 2, 3, -1, -1, 4], [5, 6, -1, 7, 8, 9]]
    assert out.guide is not None and not bool(out.guide.any())
