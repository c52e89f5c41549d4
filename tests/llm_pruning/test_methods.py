"""In-LLM pruning methods on hand-worked examples: the ranking rule, each method's schedule, config errors."""

from __future__ import annotations

import pytest
import torch

from fopru.components import CONFIG_DIR, choices, load
from fopru.errors import ConfigError
from fopru.layout import Budget
from fopru.llm_pruning import Drop, FastV, LLMPruning, NoLLMPruning, PyramidDrop, VisualTokenWithdrawal, rank_visual


def test_rank_visual_keeps_text_and_the_most_attended_visual_tokens() -> None:
    # Sample 0: positions 1..4 visual with scores 0.1, 0.4, 0.2, 0.4; keep 2 -> 0.4 at 2 and 0.4 at 4 (tie: both),
    #   text positions 0 and 5 stay whatever their score.
    # Sample 1: positions 0..3 visual with scores 0.3, 0.3, 0.3, 0.1; keep 2 -> the tie breaks to the lower
    #   positions 0 and 1; position 4 is text (kept), 5 is padding-like non-visual (kept: callers mask padding).
    scores = torch.tensor([[0.9, 0.1, 0.4, 0.2, 0.4, 0.0], [0.3, 0.3, 0.3, 0.1, 0.9, 0.0]])
    visual = torch.tensor([[False, True, True, True, True, False], [True, True, True, True, False, False]])
    kept = rank_visual(scores, visual, torch.tensor([2, 2]))
    assert kept.tolist() == [[True, False, True, False, True, True], [True, True, False, False, True, True]]
    # keep 0 withdraws every visual token.
    assert rank_visual(scores, visual, torch.tensor([0, 0])).tolist() == (~visual).tolist()


def test_fastv_keeps_the_budget_after_layer_k() -> None:
    # 576 visual tokens, K = 2, R = 50%: 288 survive from layer 2 on.
    method = FastV(layer=2, keep=0.5)
    assert method.schedule(576, 32, Budget()) == (Drop(2, 288),)
    assert method.visual_per_layer(576, 4, Budget()) == (576, 576, 288, 288)
    # keep null: the run's budget, keep = 0.25 -> floor(0.25 * 10) = 2; keep_tokens = 3 -> 3; capped at n.
    assert FastV().schedule(10, 32, Budget(keep=0.25)) == (Drop(2, 2),)
    assert FastV().schedule(10, 32, Budget(keep_tokens=3)) == (Drop(2, 3),)
    assert FastV().schedule(2, 32, Budget(keep_tokens=3)) == (Drop(2, 2),)
    # A fraction of the depth: 0.25 of 8 layers is layer 2.
    assert FastV(layer=0.25, keep=0.5).schedule(4, 8, Budget()) == (Drop(2, 2),)


def test_vtw_withdraws_everything_at_the_released_k() -> None:
    # The released code and README run LLaVA-1.5-7B (32 layers) with K = 15: the tokens leave before the decoder
    # layer of index 15, so layers 0..14 see them; that is Drop(15, 0) whatever the run's keep.
    method = VisualTokenWithdrawal()
    assert method.schedule(576, 32, Budget(keep=0.1)) == (Drop(15, 0),)
    # 15 / 32 of 4 layers rounds to 2.
    assert method.visual_per_layer(6, 4, Budget()) == (6, 6, 0, 0)
    assert VisualTokenWithdrawal(layer=3).schedule(6, 4, Budget()) == (Drop(3, 0),)


def test_pyramid_drop_follows_the_paper_and_the_budget() -> None:
    # The paper's LLaVA-1.5 setting: 32 layers, boundaries after 8, 16, 24; lambda = 0.5 <=> keep = 0.125.
    paper = PyramidDrop(keep=0.125)
    assert paper.schedule(576, 32, Budget()) == (Drop(8, 288), Drop(16, 144), Drop(24, 72))
    assert PyramidDrop(ratio=0.5).schedule(576, 32, Budget()) == (Drop(8, 288), Drop(16, 144), Drop(24, 72))
    # keep = 0.25 of 100 with 3 boundaries: the last stage keeps 25; lambda = 0.25^(1/3) = 0.62996:
    # floor(100 * 0.62996) = 62, floor(100 * 0.25^(2/3) = 39.685) = 39, 25.
    assert PyramidDrop(layers=(1, 2, 3)).schedule(100, 4, Budget(keep=0.25)) == (
        Drop(1, 62),
        Drop(2, 39),
        Drop(3, 25),
    )
    # An explicit lambda: floor(0.5 * 10) = 5, floor(2.5) = 2, floor(1) = 1; never below 1.
    assert PyramidDrop(layers=(1, 2, 3), ratio=0.5).schedule(10, 4, Budget()) == (Drop(1, 5), Drop(2, 2), Drop(3, 1))
    assert PyramidDrop(layers=(1, 2), ratio=0.1).schedule(3, 4, Budget()) == (Drop(1, 1), Drop(2, 1))
    # Two boundaries, keep = 0.125: floor(576 * 0.125^(1/2) = 203.6) = 203, then 72.
    assert PyramidDrop(layers=(1, 3), keep=0.125).visual_per_layer(576, 4, Budget()) == (576, 203, 203, 72)


def test_no_pruning_has_no_boundary() -> None:
    method = NoLLMPruning()
    assert not method.active
    assert method.schedule(576, 32, Budget()) == ()
    assert method.visual_per_layer(5, 3, Budget()) == (5, 5, 5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FastV(layer=0), r"llm_pruning\.layer=0 must be >= 1"),
        (lambda: FastV(layer=1.5), r"llm_pruning\.layer=1\.5 must be a fraction"),
        (lambda: FastV(layer="2"), r"llm_pruning\.layer must be an int"),  # type: ignore[arg-type]
        (lambda: FastV(keep=0.0), r"llm_pruning\.keep must be null"),
        (lambda: PyramidDrop(ratio=1.5), r"llm_pruning\.ratio must be null"),
        (lambda: PyramidDrop(layers=()), r"llm_pruning\.layers must be a non-empty list"),
    ],
)
def test_bad_values_raise_config_error(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()  # type: ignore[operator]


def test_layers_that_do_not_fit_the_model_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"llm_pruning\.layer=2 puts the drop after layer 2, but the language model"):
        FastV(layer=2).schedule(10, 2, Budget())
    with pytest.raises(ConfigError, match=r"resolve to layers \[2, 2\] for a 4-layer .* strictly increasing"):
        PyramidDrop(layers=(2, 2)).schedule(10, 4, Budget())
    with pytest.raises(ConfigError, match=r"llm_pruning\.layers=1 puts the drop after layer 1, but .* 1 layers"):
        PyramidDrop(layers=(1,)).schedule(10, 1, Budget())


def test_fractional_boundaries_merge_on_shallow_models() -> None:
    # 0.25, 0.5, 0.75 of 3 layers round to 1, 2, 2 -> boundaries 1 and 2 (keep 0.25 of 16: 4; floor(16 * 0.5) = 8).
    assert PyramidDrop().schedule(16, 3, Budget(keep=0.25)) == (Drop(1, 8), Drop(2, 4))
    # Of 2 layers every fraction stays within [1, 1]; VTW's 15 / 32 of 2 layers is layer 1.
    assert PyramidDrop().schedule(16, 2, Budget(keep=0.25)) == (Drop(1, 4),)
    assert VisualTokenWithdrawal().schedule(16, 2, Budget()) == (Drop(1, 0),)


@pytest.mark.parametrize("name", choices("llm_pruning"))
def test_every_registered_method_builds_and_schedules(name: str) -> None:
    method = load("llm_pruning", name, LLMPruning)
    drops = method.schedule(576, 32, Budget(keep=0.25))
    layers = [drop.layer for drop in drops]
    assert layers == sorted(set(layers)) and all(1 <= layer < 32 for layer in layers)
    counts = [576, *(drop.kept for drop in drops)]
    assert counts == sorted(counts, reverse=True)
    assert (name == "none") == (drops == ())


def test_registered_choices() -> None:
    # The registry is the folder: every YAML file there is a choice, listed sorted, the no-op among them.
    assert choices("llm_pruning") == sorted(path.stem for path in (CONFIG_DIR / "llm_pruning").glob("*.yaml"))
    assert "none" in choices("llm_pruning")
