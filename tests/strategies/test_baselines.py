"""The pre-LLM baselines on small examples worked out by hand (the numbers in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, VisualLayout
from fopru.significance.attention import AttentionSummary
from fopru.strategies import (
    AdaFVStrategy,
    DivPruneStrategy,
    PruMergePlusStrategy,
    PruMergeStrategy,
    PruningStrategy,
    StrategyInputs,
    VisionZipStrategy,
    VisPrunerStrategy,
)
from fopru.strategies.prumerge import iqr_outliers


def attention(cls: list[list[float]], keys: torch.Tensor | None = None) -> AttentionSummary:
    rows = torch.tensor(cls)
    return AttentionSummary(received=rows, paid=rows, cls=rows, keys=keys)


def test_visionzip_dominant_then_contextual_merged_into_strided_targets() -> None:
    # 8 tokens, keep 0.5: k = 4, dominant = 0.5 -> 2 dominant (highest [CLS] attention: tokens 1 and 4).
    # The rest in raster order, 0 2 3 5 6 7, stride 6 // 2 = 3: targets 0 and 5; 2, 3, 6, 7 join one by key cosine:
    # 2 (1, .1) -> 0 (1, 0); 3 (.2, 1) -> 5 (0, 1); 6 (1, 1) ties -> the earlier target 0; 7 (-1, .5) -> 5.
    # A contextual token is its target plus the mean of the tokens that joined it (the released code).
    keys = torch.tensor([[1, 0], [9, 9], [1, 0.1], [0.2, 1], [9, 9], [0, 1], [1, 1], [-1, 0.5]])[None]
    cls = [[0.1, 0.5, 0.05, 0.05, 0.2, 0.05, 0.03, 0.02]]
    inputs = StrategyInputs(attention=attention(cls, keys))
    selection = VisionZipStrategy(dominant=0.5).select(torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs)
    assert selection.indices.tolist() == [[1, 4, 0, 5]]
    expected = [
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [1, 0, 0.5, 0, 0, 0, 0.5, 0],
        [0, 0, 0, 0.5, 0, 1, 0, 0.5],
    ]
    assert selection.weights is not None
    torch.testing.assert_close(selection.weights[0], torch.tensor(expected))
    assert selection.flops == 2 * 4 * 2 * 2  # 4 joining tokens x 2 targets, keys of width 2
    # The paper's reading: the plain mean of the target and the tokens that joined it.
    mean = VisionZipStrategy(dominant=0.5, contextual_merge="mean").select(
        torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs
    )
    third = 1 / 3
    assert mean.weights is not None
    torch.testing.assert_close(mean.weights[0, 2], torch.tensor([third, 0, third, 0, 0, 0, third, 0]))


def test_visionzip_keys_are_averaged_over_heads() -> None:
    # Two heads of width 1; targets 0 = (3, -1) and 5 = (-1, 0). Averaged over heads the keys are 1-D, so each
    # token joins the target of its sign: 2 (.75), 6 (1), 7 (.25) join 0 (mean 1), 3 (-1) joins 5 (mean -.5).
    # Concatenated, by 2-D cosine: 3 = (1, -3) is nearer 0 (.6 vs -.32) and 7 = (-1, 1.5) nearer 5 (.55 vs -.79).
    keys = torch.tensor([[3, -1], [9, 9], [1, 0.5], [1, -3], [9, 9], [-1, 0], [2, 0], [-1, 1.5]])[None]
    cls = torch.tensor([[0.1, 0.5, 0.05, 0.05, 0.2, 0.05, 0.03, 0.02]])
    summary = AttentionSummary(received=cls, paid=cls, cls=cls, keys=keys, key_heads=2)
    mean_keys = summary.head_mean_keys()
    assert mean_keys is not None
    torch.testing.assert_close(mean_keys[0, :, 0], keys[0].mean(dim=1))
    inputs = StrategyInputs(attention=summary)
    third = 1 / 3
    averaged = VisionZipStrategy(dominant=0.5).select(torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs)
    assert averaged.weights is not None
    torch.testing.assert_close(averaged.weights[0, 2], torch.tensor([1, 0, third, 0, 0, 0, third, third]))
    torch.testing.assert_close(averaged.weights[0, 3], torch.tensor([0, 0, 0, 1, 0, 1, 0, 0.0]))
    side_by_side = VisionZipStrategy(dominant=0.5, keys="concatenated").select(
        torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs
    )
    assert side_by_side.weights is not None
    torch.testing.assert_close(side_by_side.weights[0, 2], torch.tensor([1, 0, third, third, 0, 0, third, 0]))
    torch.testing.assert_close(side_by_side.weights[0, 3], torch.tensor([0, 0, 0, 0, 0, 1, 0, 1.0]))


def test_visionzip_split_follows_the_paper() -> None:
    strategy = VisionZipStrategy()
    assert [strategy.split(count) for count in (64, 128, 192, 1)] == [(54, 10), (108, 20), (162, 30), (1, 0)]
    with pytest.raises(ConfigError, match="dominant=0"):
        VisionZipStrategy(dominant=0)


def test_divprune_greedy_max_min_cosine_distance() -> None:
    # v0 (1, 0), v1 (.9, .1), v2 (0, 1), v3 (-1, 0). Cosine distances: d01 = 1 - .9 / sqrt(.82) = .0061,
    # d02 = 1, d03 = 2, d12 = 1 - .1 / sqrt(.82) = .8896, d13 = 1.9939, d23 = 1. Nearest-other distance per token:
    # .0061, .0061, .8896, 1 -> v3 first. Distance to {3}: 2, 1.9939, 1 -> v0. To {3, 0}: v1 .0061, v2 1 -> v2.
    projected = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]])
    selection = DivPruneStrategy().select(
        torch.zeros(1, 4), VisualLayout(4), Budget(keep=0.75), StrategyInputs(projected=projected)
    )
    assert selection.indices.tolist() == [[3, 0, 2]]
    assert selection.weights is None
    assert selection.flops == 2 * 4 * 4 * 2


def test_iqr_outliers_by_hand() -> None:
    # Sorted .01 .. .07, .72: Q1 = .02 + .75 * .01 = .0275, Q3 = .06 + .25 * .01 = .0625, fence .0625 + 1.5 * .035.
    saliency = torch.tensor([[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.72]])
    assert iqr_outliers(saliency).nonzero()[:, 1].tolist() == [7]


PRUMERGE_CLS = [
    [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.72],  # fence .115: outlier 7
    [0.40, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.39],  # Q1 .0275, Q3 .06 + .25 * .33 = .1425, fence .315: 0 and 7
]
# Key 7 is (1, 0); its two nearest other keys are 5 (cos .995) and 0 (cos .981); the rest are orthogonal.
PRUMERGE_KEYS = torch.tensor([[1, 0.2], [0, 1], [0, 1], [0, 1], [0, 1], [1, 0.1], [0, 1], [1, 0]]).expand(2, -1, -1)


def test_prumerge_adaptive_count_and_attention_weighted_merge() -> None:
    inputs = StrategyInputs(attention=attention(PRUMERGE_CLS, PRUMERGE_KEYS))
    selection = PruMergeStrategy(neighbours=2).select(torch.zeros(2, 8), VisualLayout(8), Budget(keep=1.0), inputs)
    # The outliers by descending attention, then the token aggregating the rest, at the most attended of them (6).
    assert selection.kept_per_sample.tolist() == [2, 3]
    assert selection.sample(0).indices.tolist() == [[7, 6]]
    assert selection.sample(1).indices.tolist() == [[0, 7, 6]]
    assert selection.indices[0].tolist() == [7, 6, 6]  # padding repeats the last kept token
    # Sample 0: token 7 plus its nearest 5 and 0 weighted by their attention .06 and .01, unnormalised.
    expected = torch.zeros(8)
    expected[[7, 5, 0]] = torch.tensor([1.0, 0.06, 0.01])
    assert selection.weights is not None
    torch.testing.assert_close(selection.weights[0, 0], expected)
    torch.testing.assert_close(selection.weights[0, 1], torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0]))
    # The paper's reading: the attention-weighted mean of the cluster, no extra token.
    mean = PruMergeStrategy(neighbours=2, merge="mean", extra_token=False).select(
        torch.zeros(2, 8), VisualLayout(8), Budget(keep=1.0), inputs
    )
    assert mean.kept_per_sample.tolist() == [1, 2]
    expected[[7, 5, 0]] = torch.tensor([0.72, 0.06, 0.01]) / 0.79
    assert mean.weights is not None
    torch.testing.assert_close(mean.weights[0, 0], expected)
    # The budget caps the count, the extra token included: keep 1/4 keeps 2 tokens, keep 1/8 one (no extra).
    # Sample 1 then keeps only its first outlier, 0; the extra token sits at the most attended of the rest, 7.
    capped = PruMergeStrategy(neighbours=2).select(torch.zeros(2, 8), VisualLayout(8), Budget(keep=0.25), inputs)
    assert capped.counts is None and capped.indices.tolist() == [[7, 6], [0, 7]]
    single = PruMergeStrategy(neighbours=2).select(torch.zeros(2, 8), VisualLayout(8), Budget(keep=0.125), inputs)
    assert single.counts is None and single.indices.tolist() == [[7], [0]]


def test_prumerge_plus_adds_a_stride_of_samples() -> None:
    # Sample 0: m = 1 outlier of 8: int(1 / (1 / 8)) = 8, stride int(8 / 3) = 2: 0, 2, 4, 6 (below 7), then the
    # extra token at 5, the most attended of the rest (1, 3, 5). Sample 1: m = 2: int(8 / 2) = 4, stride 1: 0 .. 6,
    # all but the outliers 0 and 7 added; every token is kept, so no extra token.
    inputs = StrategyInputs(attention=attention(PRUMERGE_CLS, PRUMERGE_KEYS))
    selection = PruMergePlusStrategy(neighbours=0).select(
        torch.zeros(2, 8), VisualLayout.from_grid((2, 4)), Budget(keep=1.0), inputs
    )
    assert selection.kept_per_sample.tolist() == [6, 8]
    assert selection.sample(0).indices.tolist() == [[7, 0, 2, 4, 6, 5]]
    assert selection.sample(1).indices.tolist() == [[0, 7, 1, 2, 3, 4, 5, 6]]


def test_prumerge_plus_lattice_fills_the_budget() -> None:
    # 2 x 4 grid, keep 0.5: k = 4. Sample 0 has one outlier (7); 3 spare tokens make a 1 x 3 lattice:
    # row (2 * 0 + 1) * 2 // 2 = 1, columns (2i + 1) * 4 // 6 = 0, 2, 3: tokens 4, 6, 7; 7 is already kept.
    # Sample 1 has two outliers (0, 7); 2 spare tokens make a 1 x 2 lattice: row 1, columns 1, 3: tokens 5, 7.
    inputs = StrategyInputs(attention=attention(PRUMERGE_CLS, PRUMERGE_KEYS))
    selection = PruMergePlusStrategy(neighbours=0, merge="mean", extra_token=False, spatial="lattice").select(
        torch.zeros(2, 8), VisualLayout.from_grid((2, 4)), Budget(keep=0.5), inputs
    )
    assert selection.kept_per_sample.tolist() == [3, 3]
    assert selection.indices.tolist() == [[7, 4, 6], [0, 7, 5]]
    assert selection.weights is not None  # no neighbours: each token is itself
    assert torch.equal(selection.weights, torch.nn.functional.one_hot(selection.indices, 8).float())


def test_vispruner_important_then_iterative_duplicate_removal() -> None:
    # 8 tokens, keep 0.5: k = 4, 2 important (attention descends with the index: tokens 0, 1); the residual 2..7
    # is thinned to 2, one token per round (step 1). Features: 2 (1, 0, 0), 3 (1, 1, 0) / sqrt 2, 4 and 5 (0, 0, 1),
    # 6 (0, 1, 0), 7 (-1, 0, 0). Each round splits the current order, removes the best-matching first-half token
    # and rebuilds the order: the surviving first half by descending score, then the second half.
    # Round 1, 2 3 4 5 6 7: 2, 4, 6 vs 3, 5, 7 score .707, 1, .707 -> 4 leaves: 2 6 | 3 5 7.
    # Round 2, 2 6 3 5 7: 2, 3, 7 vs 6, 5 score 0, .707, 0 -> 3 leaves: 2 7 | 6 5.
    # Round 3, 2 7 6 5: 2, 6 vs 7, 5 score 0, 0 (tie -> the earlier) -> 2 leaves: 6 | 7 5.
    # Round 4, 6 7 5: 6, 5 vs 7 score 0, 0 -> 6 leaves: 5 | 7.
    features = torch.tensor(
        [[9, 9, 9], [9, 9, 9], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float32
    )[None]
    cls = [[0.3, 0.2, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05]]
    inputs = StrategyInputs(features, attention(cls))
    selection = VisPrunerStrategy(important=0.5, step=1).select(
        torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs
    )
    assert selection.indices.tolist() == [[0, 1, 5, 7]]
    assert selection.flops == 2 * 6 * 6 * 3  # cosine similarity of the 6 residual tokens
    # Keeping the interleaved order instead: 2 3 5 6 7, then 3 5 6 7, 5 6 7, 6 7.
    interleaved = VisPrunerStrategy(important=0.5, step=1, rebuild=False).select(
        torch.zeros(1, 8), VisualLayout(8), Budget(keep=0.5), inputs
    )
    assert interleaved.indices.tolist() == [[0, 1, 6, 7]]


def test_adafv_picks_the_mix_with_the_best_geometric_mean() -> None:
    # One real text token e = (1, 0) (the second is padding and must not count). Visual tokens (0, 1), (0, 1),
    # (1, 0), (1, 0): cosines 0, 0, 1, 1; temperature 1 -> p_t = (1, 1, e, e) / (2 + 2e) = .134, .134, .366, .366.
    # k = 2. Sample 0, p_v = .4 .3 .2 .1: a = 0 {2, 3}: sqrt(.3 * .732) = .469; a = 1 {0, 2}: sqrt(.6 * .5) = .548;
    # a = 2 {0, 1}: sqrt(.7 * .268) = .433 -> {0, 2}. Sample 1, p_v uniform: .605, .5, .366 -> {2, 3}.
    projected = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]).expand(2, -1, -1)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, -1, -1)
    mask = torch.tensor([[True, False], [True, False]])
    inputs = StrategyInputs(
        attention=attention([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]),
        projected=projected,
        text=text,
        text_mask=mask,
    )
    strategy = AdaFVStrategy(temperature=1.0)
    similarity = strategy.text_similarity(projected, text, mask)
    high = math.e / (2 + 2 * math.e)
    torch.testing.assert_close(similarity[0], torch.tensor([0.5 - high, 0.5 - high, high, high]))
    selection = strategy.select(torch.zeros(2, 4), VisualLayout(4), Budget(keep=0.5), inputs)
    assert selection.indices.tolist() == [[0, 2], [2, 3]]
    assert selection.flops == 2 * 2 * 4 * 2  # (T = 2) x (n = 4) cosines of width 2


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (VisionZipStrategy(), "reads the vision encoder's attention"),
        (DivPruneStrategy(), "needs the projected visual tokens"),
        (VisPrunerStrategy(), "reads the vision encoder's attention"),
    ],
)
def test_missing_inputs_are_clear_errors(strategy: PruningStrategy, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        strategy.select(torch.rand(1, 4), VisualLayout(4), Budget(keep=0.5), StrategyInputs(torch.rand(1, 4, 3)))


def test_without_cls_saliency_is_the_attention_received() -> None:
    summary = AttentionSummary(received=torch.tensor([[0.1, 0.6, 0.3]]), paid=torch.full((1, 3), 1 / 3), cls=None)
    assert StrategyInputs(attention=summary).saliency("test").tolist() == summary.received.tolist()
    selection = VisPrunerStrategy(important=1.0).select(
        torch.zeros(1, 3), VisualLayout(3), Budget(keep=0.34), StrategyInputs(torch.rand(1, 3, 2), summary)
    )
    assert selection.indices.tolist() == [[1]]
