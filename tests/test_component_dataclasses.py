"""Every registered component is a small frozen dataclass: its fields are its config keys, its repr is its config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, choices, load
from fopru.groups import BASES
from fopru.layout import Budget, Grid, VisualLayout
from fopru.pipeline import PruningPipeline
from fopru.reorder.policies import OriginalOrder
from fopru.significance.sources import UniformSignificance
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices

GROUPS = ("significance", "strategy", "reorder", "llm_pruning")


def registered() -> list[object]:
    return [pytest.param(group, name, id=f"{group}-{name}") for group in GROUPS for name in choices(group)]


def yaml_keys(group: str, name: str) -> list[str]:
    node = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    return [str(key) for key in node if key != "_target_"]


@pytest.mark.parametrize(("group", "name"), registered())
def test_a_registered_component_is_a_frozen_dataclass_of_its_config(group: str, name: str) -> None:
    component = load(group, name, BASES[group])
    kind = type(component)
    assert "__dataclass_params__" in vars(kind), f"{kind.__name__} is not itself a dataclass"
    assert kind.__dataclass_params__.frozen, f"{kind.__name__} is not frozen"  # type: ignore[attr-defined]

    config = [field for field in dataclasses.fields(component) if field.init]
    assert sorted(field.name for field in config) == sorted(yaml_keys(group, name))
    for internal in dataclasses.fields(component):
        if not internal.init:  # a mutable internal (a seeded generator): neither shown nor compared
            assert not internal.repr and not internal.compare, internal.name

    settings = ", ".join(f"{field.name}={getattr(component, field.name)!r}" for field in config)
    assert repr(component) == f"{kind.__name__}({settings})"

    again = load(group, name, BASES[group])
    assert again == component and hash(again) == hash(component)
    for field in config:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(component, field.name, getattr(component, field.name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        component.anything_else = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("group", "name"), registered())
def test_a_component_rebuilt_from_its_fields_is_equal_and_a_flipped_flag_is_not(group: str, name: str) -> None:
    component = load(group, name, BASES[group])
    assert dataclasses.replace(component) == component  # validation accepts, and keeps, its own normalised fields
    for field in dataclasses.fields(component):
        value = getattr(component, field.name)
        if field.init and isinstance(value, bool):  # every yaml flag, flipped, is another configuration
            flipped = dataclasses.replace(component, **{field.name: not value})
            assert flipped != component and f"{field.name}={not value!r}" in repr(flipped)


class LeastSignificantPlain(PruningStrategy):
    """A strategy written as a plain class that sets its per-instance flags in its own ``__init__``."""

    merges = True

    def __init__(self, mean: bool = True, with_cls: bool = False) -> None:
        self.mean = mean
        self.averages = mean
        self.keeps_cls = with_cls

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        indices = top_indices(-significance, budget.count(significance.shape[1], num_tokens))
        return Selection(indices, torch.nn.functional.one_hot(indices, significance.shape[1]).float())


def test_a_plain_strategy_with_its_own_init_still_works_against_the_base() -> None:
    strategy = LeastSignificantPlain(mean=False, with_cls=True)
    assert (strategy.averages, strategy.keeps_cls, strategy.per_span, strategy.merges) == (False, True, True, True)
    assert repr(strategy) == "LeastSignificantPlain(mean=False, averages=False, keeps_cls=True)"
    pipeline = PruningPipeline(UniformSignificance(), strategy, OriginalOrder(), Budget(keep=0.5))
    assert pipeline.request.cls and pipeline.request.merges
    significance = torch.tensor([[0.4, 0.1, 0.3, 0.2, 0.9, 0.0]])
    selection = strategy.select(significance, VisualLayout(6, grids=((2, 3),)), Budget(keep=0.5))
    assert selection.indices.tolist() == [[5, 1, 3]]  # the three least significant, least first
    assert LeastSignificantPlain().averages and not LeastSignificantPlain().keeps_cls
