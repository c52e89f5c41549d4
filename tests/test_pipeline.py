"""The pruning pipeline: presets, which attention gets tapped, reordering of adaptive selections."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR, load
from fopru.layout import Budget, VisualLayout
from fopru.pipeline import PruningPipeline
from fopru.reorder import OriginalOrder
from fopru.significance import AttentionReduction, AttentionSummary, ClsSignificance, SignificanceSource
from fopru.strategies import PruMergeStrategy, PruningStrategy, RankStrategy


def test_the_fastervlm_preset_is_cls_significance_with_rank() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["method=fastervlm", "keep=0.1", "stage=validate"])
    pipeline = PruningPipeline.from_config(cfg)
    assert isinstance(pipeline.significance, ClsSignificance)
    assert isinstance(pipeline.strategy, RankStrategy)
    assert pipeline.budget.keep == 0.1


def pipeline_of(significance: str, strategy: str) -> PruningPipeline:
    return PruningPipeline(
        load("significance", significance, SignificanceSource),
        load("strategy", strategy, PruningStrategy),
        OriginalOrder(),
        Budget(keep=0.25),
    )


def test_a_strategy_that_reads_attention_gets_a_tap_whatever_the_source() -> None:
    alone = pipeline_of("uniform", "visionzip").request
    assert alone.reduction == AttentionReduction() and alone.layer is None
    focal = pipeline_of("focal", "visionzip")
    request = focal.request  # the source's layer and reduction serve both
    assert request.reduction is focal.significance.reduction and request.layer == focal.significance.layer
    assert pipeline_of("uniform", "rank").request.reduction is None  # no tap at all
    assert pipeline_of("norm", "divprune").request.reduction is None  # DivPrune reads no attention


def test_the_request_states_what_the_strategy_and_reorder_need() -> None:
    for significance, strategy in (("focal", "rank"), ("uniform", "adafv"), ("norm", "divprune"), ("cls", "pool")):
        pipeline = pipeline_of(significance, strategy)
        request = pipeline.request
        assert request.projected == pipeline.strategy.needs_projected
        assert request.text == pipeline.strategy.needs_text
        assert request.merges == pipeline.strategy.merges
        assert request.positions == pipeline.reorder.positions


def test_adaptive_selections_are_reordered_sample_by_sample() -> None:
    # PruMerge keeps the IQR outliers of the [CLS] row, most attended first: sample 0 keeps 7; sample 1 keeps
    # 7 (.40) then 0 (.39). The original order sorts each sample's kept tokens; padding stays behind them.
    cls = torch.tensor(
        [[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.72], [0.39, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.40]]
    )
    summary = AttentionSummary(received=cls, paid=cls, cls=cls, keys=torch.eye(8).expand(2, -1, -1))
    strategy = PruMergeStrategy(neighbours=0, merge="mean", extra_token=False)
    pipeline = PruningPipeline(ClsSignificance(), strategy, OriginalOrder(), Budget(keep=1.0))
    pruned = pipeline.prune(summary, torch.rand(2, 8, 3), VisualLayout(8))
    selection = pruned.selection
    assert selection.kept_per_sample.tolist() == [1, 2]
    assert selection.indices.tolist() == [[7, 7], [0, 7]]
    assert selection.weights is not None
    assert torch.equal(selection.weights, torch.nn.functional.one_hot(selection.indices, 8).float())
    assert selection.flops == 2 * 2 * 8 * 8  # the keys' cosines (2 kept x 8 tokens, width 8) survive reordering
