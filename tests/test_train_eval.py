"""The Hydra entry point: composition, --help, sweeps and one-paragraph errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR, choices
from fopru.pipeline import PruningPipeline
from fopru.reorder import OriginalOrder
from fopru.run import run
from fopru.significance import FocalSignificance
from fopru.strategies import RowStrategy

ROOT = Path(__file__).resolve().parent.parent


def train_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train_eval.py"),
            *args,  # outputs/ and multirun/ land in cwd
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_defaults_compose_to_fopru() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["strategy=row", "keep=0.05", "stage=validate"])
    pipeline = run(cfg)
    assert isinstance(pipeline, PruningPipeline)
    assert isinstance(pipeline.significance, FocalSignificance)
    assert isinstance(pipeline.strategy, RowStrategy)
    assert isinstance(pipeline.reorder, OriginalOrder)
    assert pipeline.budget.keep == 0.05


def test_help_lists_the_groups_and_options(tmp_path: Path) -> None:
    result = train_eval("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("strategy", "llm_pruning", "significance", "reorder"):
        assert f"{group}: {', '.join(choices(group))}" in " ".join(result.stdout.split())
    presets = result.stdout.split("== Presets ==", 1)[1]
    assert "method=<name>" in presets and "method=fopru_row keep=0.1" in presets
    assert "+sweep=<name>" in presets and "python train_eval.py -m +sweep=keep" in presets


def test_the_readme_sweep_composes_and_validates(tmp_path: Path) -> None:
    result = train_eval("stage=validate", "strategy=row", "keep=0.05,0.25", "-m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = [line.split(" : ", 1)[1].split() for line in (result.stdout + result.stderr).splitlines() if "\t#" in line]
    assert sorted(sorted(job) for job in jobs) == [
        ["keep=0.05", "stage=validate", "strategy=row"],
        ["keep=0.25", "stage=validate", "strategy=row"],
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["keep=0"], "keep=0 is not a valid budget"),
        (["keep=1.5"], "keep=1.5 is not a valid budget"),
        (["keep=nan"], "keep=nan is not a valid budget"),
        (["keep_tokens=0"], "keep_tokens=0 is not a valid budget"),
        (["significance.direction=up"], "direction='up' is not one of ['auto', 'received', 'paid']"),
        (["batch_size=0"], "batch_size=0 must be an integer >= 1"),
        (["+stratgy=row"], "unknown key 'stratgy' (did you mean strategy?)"),
        (["model.devcie=cpu"], "model.devcie is not a key of model (did you mean model.device?)"),
        (["method=fopru_row", "strategy=rank"], "method=fopru_row sets significance=focal strategy=row"),
        (["hydra.run.dir=/proc/fopru-run"], "hydra.run.dir='/proc/fopru-run' is not writable"),
        (["model.checkpoint=/nonexistent/checkpoint"], "checkpoint '/nonexistent/checkpoint' is not a folder"),
        (["keep_tokens=300"], "keep_tokens=300 is more than the 256 visual tokens per image"),
    ],
)
def test_bad_values_end_with_one_paragraph_and_no_traceback(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = train_eval(*overrides, "logger=none", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one paragraph
    assert "Loading weights" not in result.stdout + result.stderr


@pytest.mark.parametrize("group", ["strategy", "significance", "reorder"])
def test_unknown_names_list_the_valid_choices(tmp_path: Path, group: str) -> None:
    result = train_eval(f"{group}=nonexistent", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"fopru: configuration error: {group}=nonexistent is not a {group} option: valid choices (conf/{group}/) "
        f"are {', '.join(choices(group))}"
    )


def test_an_unreachable_checkpoint_fails_fast_from_the_command_line(tmp_path: Path) -> None:
    result = train_eval("model=llava15_7b", "model.device=cpu", "stage=load", cwd=tmp_path)
    assert result.returncode == 2
    assert "checkpoint 'llava-hf/llava-1.5-7b-hf' could not be reached" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_load_loads_the_embedded_model(tmp_path: Path) -> None:
    result = train_eval("stage=load", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "loaded embedded:mini_llava (LlavaForConditionalGeneration, 1.3M parameters)" in result.stdout + result.stderr
    )
