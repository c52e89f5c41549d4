"""The README's examples run as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fopru.components import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_python_examples_run() -> None:
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})


def commands(text: str) -> list[str]:
    return [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith("python train_eval.py")
    ]


RUNNING = README[README.index("## Running") : README.index("\n## ", README.index("## Running") + 3)]
RUN_COMMANDS = commands(RUNNING)
# Commands elsewhere (GPU, hub checkpoints, clusters) cannot run here: they must at least compose.
OTHER_COMMANDS = [command for command in commands(README) if command not in RUN_COMMANDS]


def test_the_running_section_has_commands() -> None:
    assert len(RUN_COMMANDS) >= 4


# Evaluations in the README run on the whole benchmark; here on a few samples, to keep the suite fast.
QUICK = ["data.limit=6", "latency_samples=1", "latency_warmup=0", "logger=none"]


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_running_commands_succeed(command: str, tmp_path: Path) -> None:
    arguments = shlex.split(command)[2:]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_eval.py"), *QUICK, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_the_quoted_error_is_what_the_command_prints(tmp_path: Path) -> None:
    quoted = re.search(r"\$ python train_eval.py keep=1.5\n(.*)\n", README)
    assert quoted is not None
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_eval.py"), "keep=1.5"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stderr.strip() == quoted.group(1)


@pytest.mark.parametrize("command", OTHER_COMMANDS)
def test_other_commands_compose(command: str) -> None:
    """Composed with Hydra's own config (launchers, sweepers) as ``--cfg all`` would, in this process."""
    arguments = [argument for argument in shlex.split(command)[2:] if argument != "-m"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=arguments, return_hydra_config=True)
    assert OmegaConf.to_yaml(cfg, resolve=False)
