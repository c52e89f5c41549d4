import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fopru.errors import ConfigError
from fopru.significance import attention
from fopru.significance.attention import AttentionReduction, summarize_attention, summarize_query_key
from fopru.significance.pooling import pool_merged


def random_query_key(batch: int, heads: int, positions: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, positions, dim, generator=generator, dtype=torch.float64)
    key = torch.randn(batch, heads, positions, dim, generator=generator, dtype=torch.float64)
    return query, key


def reference(query: torch.Tensor, key: torch.Tensor, has_cls: bool, reduction: AttentionReduction) -> dict:
    """Plain full-matrix computation, written independently of the library's reductions."""
    scale = query.shape[-1] ** -0.5
    logits = query @ key.transpose(-1, -2) * scale
    first = int(has_cls)
    if reduction.scores == "logits":
        scores = logits[..., first:]
    elif reduction.cls_drop == "before_softmax":
        scores = logits[..., first:].softmax(-1)
    else:
        scores = logits.softmax(-1)[..., first:]
    mean = scores.mean(1)
    patches = mean[:, first:]
    return {
        "received": patches.mean(1),
        "paid": patches.mean(2),
        "cls": mean[:, 0] if has_cls else None,
    }


@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    patches=st.integers(1, 20),
    has_cls=st.booleans(),
    scores=st.sampled_from(["probabilities", "logits"]),
    cls_drop=st.sampled_from(["after_softmax", "before_softmax"]),
    block_rows=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_blockwise_query_key_summary_equals_full_matrix(
    batch: int, heads: int, patches: int, has_cls: bool, scores: str, cls_drop: str, block_rows: int, seed: int
) -> None:
    reduction = AttentionReduction(scores=scores, cls_drop=cls_drop)  # type: ignore[arg-type]
    query, key = random_query_key(batch, heads, patches + int(has_cls), 8, seed)
    summary = summarize_query_key(query, key, 8**-0.5, has_cls, reduction, block_rows=block_rows)
    expected = reference(query, key, has_cls, reduction)
    torch.testing.assert_close(summary.received, expected["received"].float())
    torch.testing.assert_close(summary.paid, expected["paid"].float())
    if has_cls:
        assert summary.cls is not None
        torch.testing.assert_close(summary.cls, expected["cls"].float())
    else:
        assert summary.cls is None


@pytest.mark.parametrize("cls_drop", ["after_softmax", "before_softmax"])
def test_full_matrix_summary_equals_query_key_summary(cls_drop: str) -> None:
    reduction = AttentionReduction(cls_drop=cls_drop)  # type: ignore[arg-type]
    query, key = random_query_key(2, 3, 10, 4, seed=1)
    probabilities = (query @ key.transpose(-1, -2) * 0.5).softmax(-1)
    full = summarize_attention(probabilities, True, reduction)
    blocks = summarize_query_key(query, key, 0.5, True, reduction, block_rows=3)
    for name in ("received", "paid", "cls"):
        torch.testing.assert_close(getattr(full, name), getattr(blocks, name))


def test_without_cls_rows_sum_to_one_so_paid_is_constant() -> None:
    query, key = random_query_key(2, 2, 9, 4, seed=2)
    summary = summarize_query_key(query, key, 0.5, has_cls=False)
    torch.testing.assert_close(summary.paid, torch.full_like(summary.paid, 1 / 9))


def test_paid_is_one_minus_cls_share_over_n() -> None:
    query, key = random_query_key(1, 3, 7, 4, seed=3)
    probabilities = (query @ key.transpose(-1, -2) * 0.5).softmax(-1).float()
    summary = summarize_attention(probabilities)
    to_cls = probabilities.mean(1)[:, 1:, 0]
    torch.testing.assert_close(summary.paid, (1 - to_cls) / 6)


def test_logits_cannot_come_from_probabilities() -> None:
    with pytest.raises(ConfigError, match="logits"):
        summarize_attention(torch.rand(1, 1, 3, 3), reduction=AttentionReduction(scores="logits"))


def test_bad_reduction_options_name_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"probabilities.*logits"):
        AttentionReduction(scores="softmax")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="after_softmax"):
        AttentionReduction(cls_drop="never")  # type: ignore[arg-type]


def test_pool_merged_sums_two_by_two_blocks_in_both_orders() -> None:
    # A 2 x 4 patch grid merged 2 x 2 gives 1 x 2 merged tokens.
    raster = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    assert pool_merged(raster, ((2, 4),), 2).tolist() == [[1 + 2 + 5 + 6, 3 + 4 + 7 + 8]]
    blocks = torch.tensor([[1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]])  # each 2 x 2 block contiguous
    assert pool_merged(blocks, ((2, 4),), 2, order="blocks").tolist() == [[14.0, 22.0]]
    with pytest.raises(ConfigError, match="divide"):
        pool_merged(torch.zeros(1, 9), ((3, 3),), 2)


def test_summaries_do_not_share_memory_between_calls() -> None:
    # On the CPU the blocks are computed in one buffer kept between calls: what a call returns must not change
    # when the next call (of another shape, in several blocks) reuses it.
    generator = torch.Generator().manual_seed(3)
    first_query, first_key = (torch.randn(2, 2, 5, 4, generator=generator) for _ in range(2))
    first = summarize_query_key(first_query, first_key, 0.5, has_cls=True)
    kept = [tensor.clone() for tensor in (first.received, first.paid, first.cls, first.cls_joint)]
    other_query, other_key = (torch.randn(3, 2, 9, 4, generator=generator) for _ in range(2))
    summarize_query_key(other_query, other_key, 0.5, has_cls=True, block_rows=2)
    for before, after in zip(kept, (first.received, first.paid, first.cls, first.cls_joint), strict=True):
        assert torch.equal(before, after)


def test_gradients_flow_through_a_summary() -> None:
    # With autograd recording, the blocks are allocated (no kept buffer, whose `out=` writes autograd refuses).
    query = torch.randn(1, 2, 5, 4, requires_grad=True)
    key = torch.randn(1, 2, 5, 4)
    summarize_query_key(query, key, 0.5).received.sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_summaries_inside_and_outside_inference_mode_share_the_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The evaluation summarises under inference mode, the latency requests and the training without it, in any order;
    # here the kept buffer is first made under inference mode.
    monkeypatch.setattr(attention._SCRATCH, "buffer", None)
    query, key = (torch.randn(1, 2, 6, 4, generator=torch.Generator().manual_seed(seed)) for seed in (4, 5))
    with torch.inference_mode():
        inside = summarize_query_key(query, key, 0.5)
    outside = summarize_query_key(query, key, 0.5)
    with torch.inference_mode():
        again = summarize_query_key(query, key, 0.5)
    assert torch.equal(inside.received, outside.received) and torch.equal(inside.received, again.received)
