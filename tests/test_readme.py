"""The README's examples run as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_python_examples_run() -> None:
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})


RUN_COMMANDS = [
    line.split("#")[0].strip()
    for block in blocks("bash")
    for line in block.splitlines()
    if line.startswith("python train_eval.py")
]


def test_the_running_section_has_commands() -> None:
    assert len(RUN_COMMANDS) >= 4


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_running_commands_succeed(command: str, tmp_path: Path) -> None:
    arguments = shlex.split(command)[2:]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train_eval.py"), *arguments],
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
