"""Building registered components from Hydra config groups.

A component is registered by a file ``conf/<group>/<name>.yaml`` whose ``_target_`` names its class; there is no
registry in code. This module instantiates a group's node and checks the result against the group's base class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fopru.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"

T = TypeVar("T")


def choices(group: str) -> list[str]:
    """Names registered in ``conf/<group>/``."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def build(group: str, node: DictConfig | dict[str, Any], base: type[T]) -> T:
    """Instantiate a group's config node and check it is a ``base``; errors name the group's choices."""
    try:
        component = instantiate(node)
    except InstantiationException as error:
        shown = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        raise ConfigError(f"could not build {group} from {shown}: {error.__cause__ or error}") from error
    if not isinstance(component, base):
        raise ConfigError(
            f"{group} config builds a {type(component).__name__}, which is not a {base.__name__}; "
            f"valid {group} choices: {', '.join(choices(group))}"
        )
    return component


def load(group: str, name: str, base: type[T]) -> T:
    """Build the component registered as ``conf/<group>/<name>.yaml``."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {group} {name!r}; valid {group} choices: {', '.join(choices(group))}")
    # Resolve interpolations such as ${seed} against the run-level defaults, as a composed run would.
    root = OmegaConf.load(CONFIG_DIR / "train_eval.yaml")
    assert isinstance(root, DictConfig)
    root.pop("defaults", None)
    root[group] = OmegaConf.load(path)
    return build(group, root[group], base)
