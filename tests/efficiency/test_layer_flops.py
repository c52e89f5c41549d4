"""Per-layer token counts (in-LLM pruning): analytic prefill/decode FLOPs against FlopCounterMode on a Llama run
segment by segment, and the average / pre-LLM-equivalent visual tokens on worked examples."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlavaConfig

from fopru.efficiency import (
    FlopsBreakdown,
    counted_flops,
    decode_flops,
    pre_llm_equivalent,
    prefill_flops,
    ranking_flops,
    staged_decode_flops,
    staged_prefill_flops,
    with_layer_tokens,
)
from fopru.errors import ConfigError
from fopru.llm_pruning import Drop
from fopru.models.staged import StagedDecoder

TEXT = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    bos_token_id=None,
    eos_token_id=None,
)


def test_equal_counts_reduce_to_the_uniform_formulas() -> None:
    config = LlamaConfig(**TEXT)
    assert staged_prefill_flops(config, [30] * 4) == prefill_flops(config, 30)
    assert staged_prefill_flops(config, [30] * 4, logits_to_keep=0) == prefill_flops(config, 30, logits_to_keep=0)
    assert staged_decode_flops(config, [30] * 4) == decode_flops(config, 30)
    assert pre_llm_equivalent(config, [12] * 4, 18) == pytest.approx(12)


def test_a_staged_llama_prefill_and_decode_are_counted_exactly() -> None:
    """20 tokens of which positions 4..15 are visual; 6 of them survive layer 2, none layer 3."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TEXT, attn_implementation="sdpa")).eval()
    staged = StagedDecoder(model.model, model.lm_head)
    embeds = torch.randn(1, 20, 64)
    mask = torch.ones(1, 20, dtype=torch.long)
    positions = torch.arange(20)[None, None]
    visual = torch.zeros(1, 20, dtype=torch.bool)
    visual[0, 4:16] = True
    cache = DynamicCache()
    segments = []
    counted = counted_flops(
        lambda: segments.extend(staged.prefill(embeds, mask, positions, visual, [(Drop(2, 6), Drop(3, 0))], cache)[1])
    )
    layer_tokens = [20, 20, 14, 8]
    # Ranking runs at layer 1 (6 of 12 survive); withdrawing everything at layer 3 needs no ranking.
    assert counted == staged_prefill_flops(model.config, layer_tokens) + ranking_flops(model.config, 20)
    assert [cache.get_seq_length(layer) for layer in range(4)] == layer_tokens
    token, step = torch.tensor([[7]]), torch.tensor([[[20]]])
    decoded = counted_flops(lambda: staged.decode(token, step, segments, cache))
    assert decoded == staged_decode_flops(model.config, layer_tokens)
    assert [cache.get_seq_length(layer) for layer in range(4)] == [21, 21, 15, 9]


def test_average_and_equivalent_visual_tokens_of_fastv_on_llava_1_5_7b() -> None:
    """FastV K=2, R=50% on LLaVA-1.5-7B (32 layers, d=4096, m=11008) with 576 visual + 40 text tokens: layers see
    576, 576, then 288 x 30 visual tokens, a mean of (2 * 576 + 30 * 288) / 32 = 306."""
    config = LlavaConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
        }
    )
    per_layer = [576, 576] + [288] * 30
    base = FlopsBreakdown(vision=1.0, projector=2.0, prefill=0.0, decode_per_token=0.0, pruning=3.0)
    breakdown = with_layer_tokens(base, config, per_layer, 40, ranking_keys=[616])
    assert breakdown.visual_tokens_mean == 306
    equivalent = breakdown.visual_tokens_equivalent
    assert equivalent is not None and 306 < equivalent < 307  # attention is quadratic: a little above the mean
    # The equivalent count, run before the LLM, costs the same prefill (lm_head on one position in both).
    lm_head = 2 * 4096 * 32064
    uniform = 32 * ((prefill_flops(config, 346, 0) - 346 * lm_head) / 32)
    staged = breakdown.prefill - lm_head
    assert uniform < staged < prefill_flops(config, 347, 0) - 347 * lm_head
    assert breakdown.pruning == 3.0 + 2 * 616 * 32 * 128
    assert (breakdown.vision, breakdown.projector) == (1.0, 2.0)


def test_layer_counts_must_match_the_depth() -> None:
    config = LlamaConfig(**TEXT)
    with pytest.raises(ConfigError, match="layer_tokens has 3 entries for a 4-layer language model"):
        staged_prefill_flops(config, [5, 5, 5])
    with pytest.raises(ConfigError, match="layer_contexts must hold 4 counts"):
        staged_decode_flops(config, [5, 5, 5, -1])
