"""Each baseline against its authors' released algorithm, re-expressed step by step in the test.

The references below follow the released code line by line (the repository and file are named in each), on a
6 x 6 grid with the written-out attention, features and keys below, and on seeded random inputs; they call none of
the project's strategy helpers. Where ``topk``/``argsort`` would order exact ties arbitrarily the references sort
stably (ties to the earlier entry); the data has no ties.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR
from fopru.layout import Budget, VisualLayout
from fopru.pipeline import PruningPipeline
from fopru.significance.attention import AttentionSummary, summarize_query_key
from fopru.strategies import (
    DivPruneStrategy,
    PruMergePlusStrategy,
    PruMergeStrategy,
    StrategyInputs,
    VisionZipStrategy,
    VisPrunerStrategy,
)

GRID = VisualLayout.from_grid((6, 6))
# [CLS]-to-patch attention of a 6 x 6 grid: distinct values, four clear outliers (tokens 8, 14, 27, 33).
CLS = torch.tensor(
    [
        [0.028, 0.029, 0.001, 0.024, 0.008, 0.021, 0.004, 0.009, 0.210, 0.027, 0.006, 0.018],
        [0.011, 0.013, 0.170, 0.017, 0.023, 0.014, 0.022, 0.036, 0.025, 0.032, 0.026, 0.030],
        [0.002, 0.015, 0.007, 0.120, 0.031, 0.005, 0.034, 0.016, 0.010, 0.090, 0.020, 0.003],
    ]
).reshape(1, 36)
FEATURES = torch.tensor(
    [
        (-0.51, 1.03, -0.35),
        (0.12, -0.18, -1.50),
        (0.14, -0.52, -0.25),
        (-0.53, 2.89, -0.59),
        (1.31, 0.35, -1.32),
        (-0.01, 0.25, 1.57),
        (-1.64, -1.59, -0.15),
        (-1.10, 1.37, 0.69),
        (-0.39, 0.62, 0.75),
        (0.60, 2.02, -1.17),
        (-1.32, 1.13, -0.23),
        (0.52, -2.06, 0.14),
        (0.50, -0.61, -0.80),
        (0.16, 0.71, -0.74),
        (0.28, 0.37, 3.00),
        (-0.26, -0.68, 1.06),
        (-0.02, -0.63, 0.55),
        (-1.59, 0.53, 0.90),
        (1.00, -0.22, 1.33),
        (-0.11, -1.03, 0.04),
        (-0.97, 0.28, 0.57),
        (1.48, -1.46, 0.56),
        (-0.51, 0.47, -0.86),
        (-0.85, 2.02, 0.17),
        (-0.90, -1.71, -0.14),
        (1.45, 0.56, 1.16),
        (-1.72, -0.06, 0.85),
        (-0.13, -0.32, -0.71),
        (-0.23, -2.53, 0.34),
        (1.10, 0.10, -0.03),
        (0.86, -0.02, 0.32),
        (0.95, -0.46, -1.07),
        (0.76, -0.84, 0.35),
        (-2.86, -1.32, -0.06),
        (0.01, 0.11, 0.39),
        (-2.27, -0.70, 0.85),
    ]
)
KEYS = torch.tensor(
    [
        (1.04, -0.91, -1.32, -0.17),
        (-0.96, -1.01, 1.24, 1.91),
        (0.49, -0.66, -1.06, 0.67),
        (0.63, 0.89, 0.97, 1.34),
        (-1.00, -0.64, -2.40, 1.19),
        (0.33, -0.57, 0.41, -0.38),
        (-0.53, 1.76, -2.02, -0.53),
        (0.48, 0.71, 1.28, 1.33),
        (-2.21, -1.56, 0.49, -0.34),
        (1.68, 0.36, -0.15, -1.37),
        (1.08, -0.40, 1.01, 1.10),
        (1.39, -1.42, 1.08, -0.47),
        (0.59, 1.25, 0.27, 1.46),
        (-2.15, -0.02, -0.39, -0.78),
        (-0.42, -0.11, 0.72, -0.64),
        (1.32, 0.67, -0.03, 0.97),
        (-0.86, 0.04, -0.28, 0.44),
        (-1.36, -1.02, 0.41, -0.86),
        (-0.86, 1.10, 0.42, 0.44),
        (0.39, 0.38, -1.07, -0.99),
        (0.81, 1.74, 0.86, 0.79),
        (0.64, 0.07, -0.89, 0.36),
        (0.27, -0.54, -0.36, 0.71),
        (-0.04, -1.78, -0.49, -1.71),
        (-0.90, -0.35, -0.23, 0.16),
        (-1.68, -0.47, 0.01, 1.34),
        (-0.06, -1.85, 0.26, -0.16),
        (-1.69, -0.11, 0.50, -0.26),
        (-0.42, -0.06, -0.67, -1.04),
        (-1.27, -2.18, 0.51, -1.02),
        (0.86, 1.19, 0.26, -0.01),
        (1.55, 0.49, 0.25, -0.53),
        (0.30, 2.02, -2.55, 0.15),
        (-1.37, 0.75, 0.53, -0.35),
        (1.38, -0.75, -0.39, -0.11),
        (0.27, 0.11, -1.45, 1.06),
    ]
)
# Two heads of width 2: KEYS[:, :2] is head 0's key, KEYS[:, 2:] head 1's.
HEADS = 2


def summary(cls: torch.Tensor, keys: torch.Tensor) -> AttentionSummary:
    """A tapped layer's summary with the given [CLS] row and (heads concatenated) keys."""
    return AttentionSummary(received=cls, paid=cls, cls=cls, keys=keys, key_heads=HEADS)


def random_inputs(seed: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (B, 36) [CLS] attention, (B, 36, 5) features and (B, 36, 4) keys."""
    generator = torch.Generator().manual_seed(seed)
    cls = torch.softmax(2 * torch.randn(batch, 36, generator=generator), dim=1)
    features = torch.randn(batch, 36, 5, generator=generator)
    keys = torch.randn(batch, 36, 2 * HEADS, generator=generator)
    return cls, features, keys


def stable_top(values: torch.Tensor, count: int) -> torch.Tensor:
    """``topk(values, count).indices`` with exact ties to the earlier entry (the data has none)."""
    return torch.sort(values, descending=True, stable=True).indices[:count]


# ---------------------------------------------------------------------------------------------------------------
# VisionZip: dvlab-research/VisionZip, visionzip/clip_encoder.py (CLIPVisionTower_VisionZip.forward) and
# visionzip/utils.py (CLIPAttention_forward returns the raw keys averaged over heads as the metric).


def visionzip_released(
    cls: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor, dominant_num: int, contextual_num: int
) -> tuple[list[int], torch.Tensor]:
    """One image: (kept patch positions in output order, output tokens). ``dominant_num`` counts patches only
    (the released code adds [CLS] on top of them)."""
    size = cls.shape[0]
    topk_indices = stable_top(cls, dominant_num)
    mask = torch.ones(size, dtype=torch.bool)
    mask[topk_indices] = False  # True: not dominant
    dominant_tokens = hidden[~mask]  # masked_select: raster order
    metric = keys.view(size, HEADS, -1).mean(dim=1)  # raw_key_states.mean(1)
    metric_filtered = metric[mask]
    hidden_filtered = hidden[mask]
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[0] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[0], step)[:contextual_num]
    target_tokens = metric_normalized[target_indices]
    not_target = ~torch.isin(torch.arange(metric_normalized.shape[0]), target_indices)
    tokens_to_merge = metric_normalized[not_target]
    similarity = tokens_to_merge @ target_tokens.T
    assign_one_hot = torch.zeros(tokens_to_merge.shape[0], contextual_num)
    assign_one_hot.scatter_(1, similarity.argmax(dim=1)[:, None], 1)
    counts = assign_one_hot.sum(dim=0).clamp(min=1)[:, None]
    aggregated_hidden = (assign_one_hot.T @ hidden_filtered[not_target]) / counts
    contextual_tokens = hidden_filtered[target_indices] + aggregated_hidden
    positions = (~mask).nonzero()[:, 0].tolist() + mask.nonzero()[:, 0][target_indices].tolist()
    return positions, torch.cat([dominant_tokens, contextual_tokens])


def test_visionzip_follows_the_released_code_on_a_6x6_grid() -> None:
    # keep_tokens 12: dominant round(.84375 * 12) = 10, contextual 2.
    strategy = VisionZipStrategy()
    inputs = StrategyInputs(FEATURES[None], summary(CLS, KEYS[None]))
    selection = strategy.select(torch.zeros(1, 36), GRID, Budget(keep_tokens=12), inputs)
    positions, tokens = visionzip_released(CLS[0], KEYS, FEATURES, 10, 2)
    assert selection.indices[0].tolist() == positions
    torch.testing.assert_close(selection.gather(FEATURES[None])[0], tokens)
    # The paper's reading (plain mean of target and members) and concatenated heads are options; both differ here.
    mean = VisionZipStrategy(contextual_merge="mean").select(torch.zeros(1, 36), GRID, Budget(keep_tokens=12), inputs)
    assert not torch.allclose(mean.gather(FEATURES[None])[0], tokens)
    assert mean.weights is not None
    torch.testing.assert_close(mean.weights.sum(-1), torch.ones(1, 12))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keep_tokens", [6, 9, 20])
def test_visionzip_matches_the_released_code_on_random_inputs(seed: int, keep_tokens: int) -> None:
    cls, features, keys = random_inputs(seed)
    strategy = VisionZipStrategy()
    dominant, contextual = strategy.split(keep_tokens)
    selection = strategy.select(
        torch.zeros(3, 36), GRID, Budget(keep_tokens=keep_tokens), StrategyInputs(features, summary(cls, keys))
    )
    merged = selection.gather(features)
    for sample in range(3):
        positions, tokens = visionzip_released(cls[sample], keys[sample], features[sample], dominant, contextual)
        assert selection.indices[sample].tolist() == positions
        torch.testing.assert_close(merged[sample], tokens)


def visionzip_released_sequence(
    cls: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor, dominant: int, contextual_num: int, heads: int = HEADS
) -> tuple[list[int], torch.Tensor]:
    """One image's whole tower sequence, [CLS] first ((1 + N, ...) ``keys`` and ``hidden``): (kept patch positions
    in output order, output tokens). ``dominant`` is the released argument, which counts [CLS]
    (``visionzip/main.py``: ``dominant_num = dominant - 1``)."""
    dominant_num = dominant - 1
    length = hidden.shape[0]
    topk_indices = stable_top(cls, dominant_num) + 1
    all_indices = torch.cat([torch.zeros(1, dtype=topk_indices.dtype), topk_indices])
    mask = torch.ones(length, dtype=torch.bool)
    mask[all_indices] = False
    dominant_tokens = hidden[~mask]  # masked_select: [CLS] first, then the patches in raster order
    metric = keys.view(length, heads, -1).mean(dim=1)
    metric_filtered = metric[mask]
    hidden_filtered = hidden[mask]
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[0] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[0], step)[:contextual_num]
    not_target = ~torch.isin(torch.arange(metric_normalized.shape[0]), target_indices)
    similarity = metric_normalized[not_target] @ metric_normalized[target_indices].T
    assign_one_hot = torch.zeros(int(not_target.sum()), contextual_num)
    assign_one_hot.scatter_(1, similarity.argmax(dim=1)[:, None], 1)
    counts = assign_one_hot.sum(dim=0).clamp(min=1)[:, None]
    contextual_tokens = hidden_filtered[target_indices] + (assign_one_hot.T @ hidden_filtered[not_target]) / counts
    patches = ((~mask).nonzero()[1:, 0] - 1).tolist() + (mask.nonzero()[:, 0][target_indices] - 1).tolist()
    return patches, torch.cat([dominant_tokens, contextual_tokens])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("keep_tokens", [5, 12, 20])
def test_visionzip_keeps_cls_as_a_dominant_token_as_released(seed: int, keep_tokens: int) -> None:
    # The tower's whole sequence: [CLS] then the 36 patches. The strategy reads the patches and [CLS] apart.
    cls, patches, patch_keys = random_inputs(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    hidden = torch.cat([torch.randn(3, 1, 5, generator=generator), patches], dim=1)
    keys = torch.cat([torch.randn(3, 1, 2 * HEADS, generator=generator), patch_keys], dim=1)
    pipeline = method_pipeline("visionzip")
    pipeline = replace(pipeline, budget=Budget(keep_tokens=keep_tokens))
    dominant, contextual = pipeline.strategy.split(keep_tokens)  # type: ignore[attr-defined]
    inputs = StrategyInputs(cls_features=hidden[:, :1])
    pruned = pipeline.prune(summary(cls, patch_keys), patches, GRID, inputs)
    assert pruned.cls_first and pruned.selection.kept == keep_tokens - 1
    tokens = torch.cat([hidden[:, :1], pruned.selection.gather(patches)], dim=1)
    for sample in range(3):
        positions, expected = visionzip_released_sequence(
            cls[sample], keys[sample], hidden[sample], dominant, contextual
        )
        assert pruned.selection.indices[sample].tolist() == positions
        torch.testing.assert_close(tokens[sample], expected)
    # keep_cls=false: all dominant tokens are patches, [CLS] is not sent (the reading without it).
    without = replace(pipeline, strategy=VisionZipStrategy(keep_cls=False)).prune(
        summary(cls, patch_keys), patches, GRID, inputs
    )
    assert not without.cls_first and without.selection.kept == keep_tokens
    positions, _ = visionzip_released(cls[0], patch_keys[0], patches[0], dominant, contextual)
    assert without.selection.indices[0].tolist() == positions


def method_pipeline(method: str) -> PruningPipeline:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=[f"method={method}", "keep=1.0", "stage=validate"])
    return PruningPipeline.from_config(cfg)


def test_the_visionzip_method_keeps_the_released_order() -> None:
    # Dominant tokens in raster order, then the contextual ones appended: not one sorted sequence.
    pipeline = method_pipeline("visionzip")
    pipeline = PruningPipeline(
        pipeline.significance, pipeline.strategy, pipeline.reorder, Budget(keep_tokens=12), pipeline.llm_pruning
    )
    pruned = pipeline.prune(summary(CLS, KEYS[None]), FEATURES[None], GRID).selection
    positions, tokens = visionzip_released(CLS[0], KEYS, FEATURES, 10, 2)
    assert pruned.indices[0].tolist() == positions != sorted(positions)
    torch.testing.assert_close(pruned.gather(FEATURES[None])[0], tokens)


# ---------------------------------------------------------------------------------------------------------------
# VisPruner: Theia-4869/VisPruner, llava/model/llava_arch.py (encode_images).


def vispruner_released(cls: torch.Tensor, features: torch.Tensor, visual_token_num: int) -> list[int]:
    """One image: important then diverse token indices, before the released index mask sorts them."""
    important_token_num = int(visual_token_num * 0.5)
    diverse_token_num = visual_token_num - important_token_num
    token_indices = torch.sort(cls, descending=True, stable=True).indices
    important_indices = token_indices[:important_token_num]
    residual_indices = token_indices[important_token_num:]
    image_normalized = features / features.norm(dim=-1, keepdim=True)
    while diverse_token_num > 0:
        length = residual_indices.shape[0]
        remove = min(8, length - diverse_token_num)
        if remove <= 0:
            break
        residual_tokens = image_normalized[residual_indices]
        a, b = residual_tokens[::2], residual_tokens[1::2]
        scores = (a @ b.T).max(dim=-1).values
        distinct_indices = torch.sort(scores, descending=True, stable=True).indices[remove:]
        residual_indices = torch.cat([residual_indices[::2][distinct_indices], residual_indices[1::2]])
    return torch.cat([important_indices, residual_indices]).tolist()


def test_vispruner_follows_the_released_code_on_a_6x6_grid() -> None:
    # 8 tokens: 4 important, the residual of 32 thinned in rounds of 8, 8, 8 and 4, each rebuilding the order.
    inputs = StrategyInputs(FEATURES[None], summary(CLS, KEYS[None]))
    selection = VisPrunerStrategy().select(torch.zeros(1, 36), GRID, Budget(keep_tokens=8), inputs)
    assert selection.indices[0].tolist() == vispruner_released(CLS[0], FEATURES, 8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keep_tokens", [6, 8, 11])
def test_vispruner_matches_the_released_code_on_random_inputs(seed: int, keep_tokens: int) -> None:
    cls, features, keys = random_inputs(seed)
    inputs = StrategyInputs(features, summary(cls, keys))
    selection = VisPrunerStrategy().select(torch.zeros(3, 36), GRID, Budget(keep_tokens=keep_tokens), inputs)
    for sample in range(3):
        assert selection.indices[sample].tolist() == vispruner_released(cls[sample], features[sample], keep_tokens)


def test_vispruner_order_rebuilding_changes_the_kept_set() -> None:
    # Splitting the interleaved order instead of the rebuilt one keeps other tokens on some of these inputs.
    differs = 0
    for seed in range(4):
        cls, features, keys = random_inputs(seed)
        inputs = StrategyInputs(features, summary(cls, keys))
        budget = Budget(keep_tokens=8)
        rebuilt = VisPrunerStrategy().select(torch.zeros(3, 36), GRID, budget, inputs).indices
        interleaved = VisPrunerStrategy(rebuild=False).select(torch.zeros(3, 36), GRID, budget, inputs).indices
        for sample in range(3):
            differs += set(rebuilt[sample].tolist()) != set(interleaved[sample].tolist())
    assert differs > 0


# ---------------------------------------------------------------------------------------------------------------
# DivPrune: vbdi/divprune, LLaVA/llava/model/llava_arch.py (DivPrune, prepare_inputs_labels_for_multimodal).


def divprune_released(visual_tokens: torch.Tensor, threshold_ratio: float) -> list[int]:
    """The selection order over one image's (n, D) projected tokens."""
    threshold_terms = round(threshold_ratio * visual_tokens.shape[0])  # int(round(...)) in the released code
    norm_matrix = visual_tokens / visual_tokens.norm(dim=1, keepdim=True)
    cosine_matrix = 1.0 - norm_matrix @ norm_matrix.T
    chosen = torch.empty(threshold_terms, dtype=torch.long)
    for i in range(threshold_terms):
        if i == 0:
            scores = torch.topk(cosine_matrix, 2, dim=0, largest=False).values[1, :]
        else:
            scores = torch.min(cosine_matrix[chosen[:i]], dim=0).values
        chosen[i] = torch.argmax(scores)
    return chosen.tolist()


@pytest.mark.parametrize("keep", [0.098, 0.375, 0.25])
def test_divprune_follows_the_released_code_on_a_6x6_grid(keep: float) -> None:
    # keep .098 of 36 = 3.53 -> round 4 (floor 3); .375 of 36 = 13.5 -> 14 (halves to even); .25 -> 9.
    selection = DivPruneStrategy().select(
        torch.zeros(1, 36), GRID, Budget(keep=keep), StrategyInputs(projected=FEATURES[None])
    )
    released = divprune_released(FEATURES, keep)
    assert selection.indices[0].tolist() == released
    assert len(released) == {0.098: 4, 0.375: 14, 0.25: 9}[keep]
    floor = DivPruneStrategy(rounding="floor").select(
        torch.zeros(1, 36), GRID, Budget(keep=keep), StrategyInputs(projected=FEATURES[None])
    )
    assert floor.kept == {0.098: 3, 0.375: 13, 0.25: 9}[keep]


def test_divprune_runs_once_over_a_packed_multi_grid_image() -> None:
    # LLaVA-NeXT-like: a 2 x 3 base grid then a 5 x 6 tile grid. The released code selects over all 36 tokens at
    # once with round(keep * 36) of them; per_grid with floor rounding gives each grid its own floor share instead.
    layout = VisualLayout(36, grids=((2, 3), (5, 6)))
    packed = DivPruneStrategy().select(
        torch.zeros(1, 36), layout, Budget(keep=0.25), StrategyInputs(projected=FEATURES[None])
    )
    assert packed.indices[0].tolist() == divprune_released(FEATURES, 0.25)
    per_grid = DivPruneStrategy(rounding="floor", spans="per_grid").select(
        torch.zeros(1, 36), layout, Budget(keep=0.25), StrategyInputs(projected=FEATURES[None])
    )
    base = divprune_released(FEATURES[:6], 1 / 6)  # floor(.25 * 6) = 1 of the base grid
    tiles = [6 + index for index in divprune_released(FEATURES[6:], 7 / 30)]  # floor(.25 * 30) = 7 of the tiles
    assert per_grid.indices[0].tolist() == base + tiles


def test_the_divprune_method_restores_sequence_order() -> None:
    pipeline = method_pipeline("divprune")
    pipeline = PruningPipeline(pipeline.significance, pipeline.strategy, pipeline.reorder, Budget(keep=0.25))
    pruned = pipeline.prune(None, FEATURES[None], GRID, StrategyInputs(projected=FEATURES[None])).selection
    assert pruned.indices[0].tolist() == sorted(divprune_released(FEATURES, 0.25))  # keep_indexs.sort()


# ---------------------------------------------------------------------------------------------------------------
# PruMerge / PruMerge+: 42Shawn/LLaVA-PruMerge, llava/model/multimodal_encoder/clip_encoder.py
# (outlier_dectection, token_prune_merge_advanced, token_prune_merge_advanced_plus with if_adaptive=True).

# The last layer's [CLS] query and [CLS] key (full width 4 = 2 heads x 2); the patch keys are KEYS.
CLS_QUERY = torch.tensor([-1.46, -1.81, -1.67, 2.00])
CLS_KEY = torch.tensor([0.50, -0.50, 0.50, -0.50])


def prumerge_released(
    query: torch.Tensor, key: torch.Tensor, image_features: torch.Tensor, plus: bool, neighbours: int = 32
) -> tuple[list[int], torch.Tensor]:
    """One image from the last layer's full-width (T, C) queries and keys ([CLS] first) and the (N, D) features:
    (kept positions in output order, output tokens; the last one aggregates the tokens not kept)."""
    size = image_features.shape[0]
    attn = torch.softmax((query @ key.T) * query.shape[-1] ** -0.5, dim=-1)
    cls_attn = attn[0, 1:]
    attn_np = cls_attn.numpy()
    upper_bound = np.percentile(attn_np, 75) + 1.5 * (np.percentile(attn_np, 75) - np.percentile(attn_np, 25))
    reduction_ratio = len(np.where(attn_np > upper_bound)[0]) / len(attn_np)
    idx = stable_top(cls_attn, int(size * reduction_ratio))
    if plus:
        step_length = int(1 / reduction_ratio)
        arithmetic_sequence = torch.arange(0, size - 1, int(step_length / 3))  # the released 575 is N - 1
        filtered_sequence = torch.tensor([x for x in arithmetic_sequence.tolist() if x not in idx.tolist()])
        idx = torch.cat([idx, filtered_sequence.long()])
    key_wo_cls = key[1:]
    x_others = image_features[idx]
    x_others_attn = cls_attn[idx]
    key_others = key_wo_cls[idx]
    compl = torch.tensor(sorted(set(range(size)) - set(idx.tolist())), dtype=torch.long)
    non_topk = image_features[compl]
    non_topk_key = key_wo_cls[compl]
    non_topk_attn = cls_attn[compl]
    key_others_norm = torch.nn.functional.normalize(key_others, p=2, dim=-1)
    non_topk_key_norm = torch.nn.functional.normalize(non_topk_key, p=2, dim=-1)
    updated = torch.zeros_like(x_others)
    for i in range(idx.shape[0]):
        rest_x = torch.cat([x_others[:i], x_others[i + 1 :], non_topk])
        rest_attn = torch.cat([x_others_attn[:i], x_others_attn[i + 1 :], non_topk_attn])
        rest_keys = torch.cat([key_others_norm[:i], key_others_norm[i + 1 :], non_topk_key_norm])
        cos_sim = rest_keys @ key_others_norm[i]
        cluster_indices = stable_top(cos_sim, neighbours)
        weighted_avg = (rest_x[cluster_indices] * rest_attn[cluster_indices][:, None]).sum(dim=0)
        updated[i] = x_others[i] + weighted_avg
    extra_one_token = (non_topk * non_topk_attn[:, None]).sum(dim=0, keepdim=True)
    representative = compl[stable_top(non_topk_attn, 1)].tolist()
    return idx.tolist() + representative, torch.cat([updated, extra_one_token])


def tapped(query: torch.Tensor, key: torch.Tensor) -> AttentionSummary:
    """What the vision tap records from full-width (T, C) queries and keys split into the layer's heads."""
    per_head = [tensor.view(1, tensor.shape[0], HEADS, -1).transpose(1, 2) for tensor in (query, key)]
    result = summarize_query_key(per_head[0], per_head[1], (query.shape[-1] // HEADS) ** -0.5, has_cls=True)
    return AttentionSummary(
        received=result.received,
        paid=result.paid,
        cls=result.cls,
        keys=key[None, 1:],
        key_heads=HEADS,
        cls_joint=result.cls_joint,
    )


def last_layer(seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(37, 4) queries and keys: the written-out [CLS] query and keys, or seeded random ones."""
    if seed is None:
        return torch.cat([CLS_QUERY[None], KEYS]), torch.cat([CLS_KEY[None], KEYS])
    generator = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(37, 4, generator=generator), torch.randn(37, 4, generator=generator)


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("neighbours", [32, 4])
@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_prumerge_follows_the_released_code(plus: bool, neighbours: int, seed: int | None) -> None:
    query, key = last_layer(seed)
    strategy = (PruMergePlusStrategy if plus else PruMergeStrategy)(neighbours=neighbours)
    selection = strategy.select(
        torch.zeros(1, 36), GRID, Budget(keep=1.0), StrategyInputs(attention=tapped(query, key))
    )
    positions, tokens = prumerge_released(query, key, FEATURES, plus, neighbours)
    assert selection.indices[0].tolist() == positions
    torch.testing.assert_close(selection.gather(FEATURES[None])[0], tokens)


def test_prumerge_written_example_by_hand() -> None:
    # The written-out [CLS] query gives four outliers; PruMerge+ adds the stride int(int(36 / 4) / 3) = 3 samples
    # 0, 3, ..., 33 that are not outliers, then the token aggregating the rest.
    query, key = last_layer(None)
    attention = tapped(query, key)
    plain = PruMergeStrategy().select(torch.zeros(1, 36), GRID, Budget(keep=1.0), StrategyInputs(attention=attention))
    plus = PruMergePlusStrategy().select(
        torch.zeros(1, 36), GRID, Budget(keep=1.0), StrategyInputs(attention=attention)
    )
    outliers = plain.indices[0, :4].tolist()
    assert plain.kept == 5  # 4 outliers + the extra token
    samples = [index for index in range(0, 35, 3) if index not in outliers]
    assert plus.indices[0, :-1].tolist() == outliers + samples


def test_the_prumerge_methods_tap_the_last_layer_and_keep_the_released_order() -> None:
    for method in ("prumerge", "prumerge_plus"):
        pipeline = method_pipeline(method)
        assert pipeline.request.layer == -1
        query, key = last_layer(None)
        pruned = pipeline.prune(tapped(query, key), FEATURES[None], GRID).selection
        positions, tokens = prumerge_released(query, key, FEATURES, method == "prumerge_plus")
        assert pruned.indices[0].tolist() == positions != sorted(positions)  # descending attention, extra last
        torch.testing.assert_close(pruned.gather(FEATURES[None])[0], tokens)


def test_the_joint_softmax_differs_from_the_head_average() -> None:
    query, key = last_layer(None)
    attention = tapped(query, key)
    assert attention.cls_joint is not None and attention.cls is not None
    released = torch.softmax(torch.cat([CLS_KEY[None], KEYS]) @ CLS_QUERY / 2, dim=0)[1:]
    torch.testing.assert_close(attention.cls_joint[0], released)
    assert not torch.allclose(attention.cls_joint, attention.cls)
