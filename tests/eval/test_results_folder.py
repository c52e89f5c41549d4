"""A results folder's name holds every choice that differs from the defaults, before its hash."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR, choices


def name(*overrides: str) -> str:
    """The folder name without its hash."""
    from fopru.eval.evaluate import results_folder

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        folder: Path = results_folder(compose(config_name="train_eval", overrides=list(overrides)))
    return folder.name.rsplit("-", 1)[0]


def test_every_reorder_policy_names_its_own_folder() -> None:
    names = {option: name(f"reorder={option}") for option in choices("reorder")}
    assert len(set(names.values())) == len(names), names
    assert names["original"] == name()  # the default is not spelled out
    assert name() == "RankStrategy-FocalSignificance-keep0.25"


def test_llm_pruning_and_a_non_default_seed_are_named() -> None:
    for option in choices("llm_pruning"):
        if option != "none":
            assert name(f"llm_pruning={option}") != name(), option
    assert name("seed=3").endswith("-keep0.25-seed3")
    assert name("seed=0") == name()
