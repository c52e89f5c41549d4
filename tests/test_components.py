import re

import pytest
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR, build, choices, load
from fopru.errors import ConfigError
from fopru.groups import BASES
from fopru.strategies import PruningStrategy


@pytest.mark.parametrize("group", sorted(BASES))
def test_every_config_file_builds_its_group_base(group: str) -> None:
    names = choices(group)
    assert names, f"conf/{group}/ is empty"
    for name in names:
        assert isinstance(load(group, name, BASES[group]), BASES[group])


def test_the_user_facing_choices_exist() -> None:
    assert set(choices("strategy")) >= {"rank", "row", "random", "uniform", "pool", "none"}
    assert set(choices("significance")) >= {"focal", "cls", "received", "paid", "norm", "uniform", "random"}
    assert set(choices("reorder")) >= {"original", "significance", "none"}


def test_a_typo_in_a_config_key_fails_loudly() -> None:
    node = OmegaConf.load(CONFIG_DIR / "strategy" / "random.yaml")
    node.sede = 3
    node.seed = 0
    with pytest.raises(ConfigError, match="sede"):
        build("strategy", node, PruningStrategy)


def test_a_component_of_the_wrong_kind_is_rejected_with_the_choices() -> None:
    node = OmegaConf.load(CONFIG_DIR / "reorder" / "original.yaml")
    listed = re.escape(f"not a PruningStrategy; valid strategy choices: {', '.join(choices('strategy'))}")
    with pytest.raises(ConfigError, match=listed):
        build("strategy", node, PruningStrategy)
