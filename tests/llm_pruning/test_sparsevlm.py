"""SparseVLM against its official algorithm (Gumpest/SparseVLMs v1.5: ``modelling_sparse_llama.py`` raters and
the raters' attention, ``score.py``'s ``attn_postprocess_topk`` and counts), re-expressed step by step here on a
short sequence: 3 prompt tokens, an 8 x 8 image, 6 instruction tokens."""

from __future__ import annotations

import math

import pytest
import torch

from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning import BoundaryInputs, Drop, SparseVLM
from fopru.llm_pruning.sparsevlm import cluster_and_merge

START, IMAGE, TEXT = 3, 64, 6
LENGTH = START + IMAGE + TEXT
HEADS, KV_HEADS, HEAD_DIM, WIDTH = 4, 2, 3, 5


def written(shape: tuple[int, ...], rate: float, phase: float) -> torch.Tensor:
    """Entry i (flat) is cos(rate * i + phase) * (1 + (i % 5) / 4): deterministic, varied, written as a formula."""
    count = math.prod(shape)
    return torch.tensor([math.cos(rate * i + phase) * (1 + (i % 5) / 4) for i in range(count)]).reshape(shape)


def official_raters(hidden_states: torch.Tensor) -> torch.Tensor:
    """``t_token_idx``: the instruction tokens whose mean (over visual tokens) softmax relation is above the mean."""
    v_t = hidden_states[:, START : START + IMAGE, :]
    t_t = hidden_states[:, START + IMAGE :, :]
    m_v_t = v_t @ t_t.transpose(1, 2)
    m_v_t = m_v_t.softmax(2).mean(1)
    return torch.where(m_v_t > m_v_t.mean())[1]


def official_scores(
    query: torch.Tensor, key: torch.Tensor, raters: torch.Tensor, v_start: int, v_num: int
) -> torch.Tensor:
    """The flash-attention path's ``attn_logits`` and ``attn_postprocess_topk``'s relation (B = 1)."""
    key = key.repeat_interleave(HEADS // KV_HEADS, dim=1)  # repeat_kv
    length = query.shape[-2]
    scale_factor = 1 / math.sqrt(query.size(-1))
    attn_bias = torch.zeros(length, length)
    temp_mask = torch.ones(length, length, dtype=torch.bool).tril(diagonal=0)
    attn_bias.masked_fill_(temp_mask.logical_not(), float("-inf"))
    attn_logits = query @ key.transpose(2, 3) * scale_factor + attn_bias
    attn_logits = torch.softmax(attn_logits, dim=-1).mean(1)
    rows = raters + v_start + v_num
    return attn_logits[:, rows, v_start : v_start + v_num].mean(1)[0]


def official_keep(relation: torch.Tensor, count: int, v_num: int) -> list[int]:
    """``attn_postprocess_topk``'s mask, as visual indices."""
    indices = torch.topk(relation, min(count, v_num - 1)).indices
    return sorted(indices.tolist())


def test_sparsevlm_equals_the_official_algorithm_over_two_stages() -> None:
    embeds = written((1, LENGTH, WIDTH), 0.61, 0.3)
    raters = official_raters(embeds)
    method = SparseVLM(layers=(1, 2), counts=(0.5, 0.25))
    visual = torch.zeros(1, LENGTH, dtype=torch.bool)
    visual[0, START : START + IMAGE] = True
    real = torch.ones(1, LENGTH, dtype=torch.bool)
    guide = method.prepare(embeds, visual, real)
    assert (guide[0].nonzero().flatten() - START - IMAGE).tolist() == raters.tolist()
    assert 0 < raters.numel() < TEXT
    drops = method.schedule(IMAGE, 4, Budget())
    assert drops == (Drop(1, 32), Drop(2, 16))
    length, v_num = LENGTH, IMAGE
    kept_positions = torch.arange(LENGTH)
    for number, drop in enumerate(drops):
        query = written((1, HEADS, length, HEAD_DIM), 0.23 + number, 0.1)
        key = written((1, KV_HEADS, length, HEAD_DIM), 0.47 + number, 0.7)
        relation = official_scores(query, key, raters, START, v_num)
        expected = official_keep(relation, drop.kept, v_num)
        inputs = BoundaryInputs(
            hidden=torch.zeros(1, length, WIDTH),
            query=query,
            key=key,
            scaling=1 / math.sqrt(HEAD_DIM),
            visual=visual,
            real=real,
            guide=guide,
            kept=torch.tensor([drop.kept]),
            number=number,
            norm=lambda hidden: hidden,
        )
        positions, scores = method.relation(inputs, 0)
        assert (positions - START).tolist() == list(range(v_num))
        torch.testing.assert_close(scores, relation)
        keep = method.select(inputs)[0]
        assert ((keep & visual[0]).nonzero().flatten() - START).tolist() == expected
        assert bool(keep[~visual[0]].all())
        # The next stage holds the survivors in prompt order, as the code's policy selection does.
        kept_positions = kept_positions[keep]
        visual, real, guide = visual[:, keep], real[:, keep], guide[:, keep]
        length, v_num = int(keep.sum()), drop.kept
    assert kept_positions.numel() == START + 16 + TEXT


def test_the_official_counts_and_their_scaling() -> None:
    # LLaVA-1.5: 576 tokens, 32 layers; the code's three settings exactly (boundaries 3, 7, 16).
    for tokens, counts in ((192, (300, 200, 110)), (128, (303, 110, 36)), (64, (66, 30, 17))):
        drops = SparseVLM().schedule(576, 32, Budget(keep_tokens=tokens))
        assert drops == tuple(Drop(layer, count) for layer, count in zip((3, 7, 16), counts, strict=True))
    # keep 0.1: k = 57, nearest setting 64 (share 1/9), scaled by 57/64: round(58.8, 26.7, 15.1) = 59, 27, 15.
    assert SparseVLM().schedule(576, 32, Budget(keep=0.1)) == (Drop(3, 59), Drop(7, 27), Drop(16, 15))
    # A 4-layer model: the fractions round to layers 1, 1, 2; the later count of a merged boundary wins; every
    # stage keeps at most v - 1 (the code's cap): 16 tokens at keep 0.5 -> setting 192, k = 8: 12.5, 8.3, 4.6.
    assert SparseVLM().schedule(16, 4, Budget(keep=0.5)) == (Drop(1, 8), Drop(2, 5))
    assert SparseVLM(layers=(1, 2), counts=(1.0, 1.0), recycle=False).schedule(4, 4, Budget()) == (
        Drop(1, 3),
        Drop(2, 2),
    )
    # Recycling: the one deleted token comes back as floor(0.3) + 1 = 1 cluster, so stage 2 again holds 4 (keeps 3).
    assert SparseVLM(layers=(1, 2), counts=(1.0, 1.0)).schedule(4, 4, Budget()) == (Drop(1, 3), Drop(2, 3))
    with pytest.raises(ConfigError, match="one fraction per boundary"):
        SparseVLM(counts=(0.5,))
    with pytest.raises(ConfigError, match="three-stage"):
        SparseVLM(layers=(1, 2))


def test_a_single_instruction_token_rates_alone() -> None:
    # One instruction token: m = (1,), never above its mean; every instruction token rates (the code would have none).
    embeds = written((1, 5, WIDTH), 0.5, 0.0)
    visual = torch.tensor([[False, True, True, True, False]])
    guide = SparseVLM().prepare(embeds, visual, torch.ones(1, 5, dtype=torch.bool))
    assert guide.tolist() == [[False, False, False, False, True]]


def official_cluster_and_merge(x: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """``utils.py``'s ``cluster_and_merge`` step by step (einops' rearranges written as indexing), without its 1e-6
    random density noise (it only breaks exact ties, which then stay ties)."""
    batch, count, width = x.shape
    distance = (x[:, :, None, :] - x[:, None, :, :]).norm(dim=-1, p=2)
    dist_matrix = distance / (width**0.5)
    dist_nearest, _ = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest**2).mean(dim=-1)).exp()
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, _ = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)
    centre_rows = dist_matrix[torch.arange(batch)[:, None], index_down]  # index_points
    idx_cluster = centre_rows.argmin(dim=1)
    idx_batch = torch.arange(batch)[:, None].expand(batch, cluster_num)
    idx_tmp = torch.arange(cluster_num)[None, :].expand(batch, cluster_num)
    idx_cluster[idx_batch.reshape(-1), index_down.reshape(-1)] = idx_tmp.reshape(-1)
    token_weight = x.new_ones(batch, count, 1)
    idx = idx_cluster + torch.arange(batch)[:, None] * cluster_num
    all_weight = token_weight.new_zeros(batch * cluster_num, 1)
    all_weight.index_add_(dim=0, index=idx.reshape(batch * count), source=token_weight.reshape(batch * count, 1))
    all_weight = all_weight + 1e-6
    norm_weight = token_weight / all_weight[idx]
    x_merged = x.new_zeros(batch * cluster_num, width)
    source = x * norm_weight
    x_merged.index_add_(dim=0, index=idx.reshape(batch * count), source=source.reshape(batch * count, width))
    return x_merged.reshape(batch, cluster_num, width)


@pytest.mark.parametrize(("count", "clusters"), [(12, 2), (23, 3), (5, 1)])
def test_cluster_and_merge_equals_the_official_clustering(count: int, clusters: int) -> None:
    states = written((count, WIDTH), 0.83, 0.2) + torch.arange(count)[:, None] % 3  # three loose groups
    merged, centres = cluster_and_merge(states, clusters)
    torch.testing.assert_close(merged, official_cluster_and_merge(states[None], clusters)[0])
    assert centres.numel() == clusters == len(set(centres.tolist()))


def test_recycling_merges_the_best_scored_deleted_tokens() -> None:
    """One boundary of 64 visual tokens keeping 32: the 32 deleted tokens' best floor(0.3 * 32) + 1 = 10 (by the
    raters' score, best first) cluster into 10 // 10 + 1 = 2 tokens, the code's merged states; the next stage holds
    32 + 2 visual tokens (then 16 + 1: the 18 deleted give floor(5.4) + 1 = 6, one cluster)."""
    embeds = written((1, LENGTH, WIDTH), 0.61, 0.3)
    method = SparseVLM(layers=(1, 2), counts=(0.5, 0.25))
    visual = torch.zeros(1, LENGTH, dtype=torch.bool)
    visual[0, START : START + IMAGE] = True
    real = torch.ones(1, LENGTH, dtype=torch.bool)
    hidden = written((1, LENGTH, WIDTH), 0.29, 1.1)
    query = written((1, HEADS, LENGTH, HEAD_DIM), 0.23, 0.1)
    key = written((1, KV_HEADS, LENGTH, HEAD_DIM), 0.47, 0.7)
    guide = method.prepare(embeds, visual, real)
    inputs = BoundaryInputs(
        hidden, query, key, 1 / math.sqrt(HEAD_DIM), visual, real, guide, torch.tensor([32]), 0, lambda h: h
    )
    keep, recycled = method.select_and_recycle(inputs)
    assert recycled is not None
    relation = official_scores(query, key, official_raters(embeds), START, IMAGE)
    # The code: deleted tokens in sequence order, their scores, the top 30% + 1 by score, their layer outputs.
    deleted = torch.where(~keep[0, START : START + IMAGE])[0]
    best = deleted[relation[deleted].topk(int(deleted.numel() * 0.3) + 1).indices]
    expected = official_cluster_and_merge(hidden[:, START + best], 2)[0]
    [part] = recycled
    torch.testing.assert_close(part.states, expected)
    assert set(part.centres.tolist()) <= set((START + best).tolist())
    assert method.recycled(64, 32) == 2
    assert method.visual_per_layer(64, 4, Budget()) == (64, 34, 16 + 1, 16 + 1)  # 18 deleted: 6 -> 1 cluster


def test_recycling_counts_on_llava_15() -> None:
    # keep_tokens 192: 300 kept + (floor(0.3 * 276) + 1) // 10 + 1 = 9 recycled; 200 + 4; 110 + 3.
    per_layer = SparseVLM().visual_per_layer(576, 32, Budget(keep_tokens=192))
    assert per_layer == (576,) * 3 + (309,) * 4 + (204,) * 9 + (113,) * 16
    assert SparseVLM(recycle=False).visual_per_layer(576, 32, Budget(keep_tokens=192)) == (
        (576,) * 3 + (300,) * 4 + (200,) * 9 + (110,) * 16
    )
