"""A new strategy is one ``.py`` and one ``.yaml``: the registry-driven tests pick it up with no test edits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STRATEGY = '''"""Keep the least significant tokens: a strategy no test names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fopru.errors import ConfigError
from fopru.layout import Budget, Grid
from fopru.strategies.base import PruningStrategy, Selection, StrategyInputs, top_indices


@dataclass(frozen=True)
class LeastSignificantStrategy(PruningStrategy):
    """Keep the ``budget.count`` least significant tokens of each span, least significant first (``least_first``)
    or in raster order."""

    least_first: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.least_first, bool):
            raise ConfigError(f"least_first={self.least_first!r} must be true or false")

    def select_span(
        self, significance: torch.Tensor, grid: Grid | None, budget: Budget, num_tokens: int, inputs: StrategyInputs
    ) -> Selection:
        indices = top_indices(-significance, budget.count(significance.shape[1], num_tokens))
        return Selection(indices if self.least_first else indices.sort(dim=1).values)
'''


def copy_of_the_project(into: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".git", ".venv", ".*_cache", "outputs", "multirun", "wandb")
    for name in ("fopru", "conf", "tests", "sweeps"):
        shutil.copytree(ROOT / name, into / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def pytest_in(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_new_strategy_file_and_yaml_pass_the_contract_tests_untouched(tmp_path: Path) -> None:
    project = copy_of_the_project(tmp_path / "project")
    (project / "fopru" / "strategies" / "least.py").write_text(STRATEGY)
    (project / "conf" / "strategy" / "least.yaml").write_text(
        "# Keep the least significant tokens.\n_target_: fopru.strategies.least.LeastSignificantStrategy\n"
        "least_first: true\n"
    )
    contract = [
        "tests/strategies/test_strategies.py",
        "tests/models/test_contract.py",
        "tests/test_component_dataclasses.py",
    ]
    picked = pytest_in(project, *contract, "-k", "least")
    assert picked.returncode == 0, picked.stdout[-4000:] + picked.stderr[-2000:]
    for path in contract:  # each registry-driven file ran the new strategy
        assert re.search(rf"PASSED {re.escape(path)}::\w+\[[^\]]*least", picked.stdout), path
    assert "failed" not in picked.stdout.splitlines()[-1]
    components = pytest_in(project, "tests/test_components.py")
    assert components.returncode == 0, components.stdout[-4000:]
