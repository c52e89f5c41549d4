"""What a job prints: one line per job, a table at the end of a sweep, everything with verbose=true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fopru.eval.result import RunResult
from fopru.pareto.table import console_table, varying_overrides
from fopru.pareto.units import flops_unit, format_flops

ROOT = Path(__file__).resolve().parent.parent
NOISE = (
    "wandb:",
    "FutureWarning",
    "Tip:",
    "GPU available",
    "predict returned None",
    "configuration:",
    "Loading weights",
)


def train_eval(tmp_path: Path, *args: str) -> str:
    command = [sys.executable, str(ROOT / "train_eval.py"), "data.limit=8", "latency_samples=0", "figure_samples=0",
               f"results_dir={tmp_path / 'results'}", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_job_prints_its_line_and_the_summary_files_only(tmp_path: Path) -> None:
    output = train_eval(tmp_path, "hydra.run.dir=run")
    lines = [
        line for line in output.splitlines() if line.strip() and "Predicting" not in line
    ]  # the progress bar redraws one line
    assert len(lines) == 2, output
    result = RunResult.load(tmp_path / "run" / "result.json")
    assert f"easyvqa accuracy {result.accuracy_interval} | {result.kept_tokens:.1f} visual tokens" in lines[0]
    assert lines[0].split("] - ", 1)[1].startswith("data.limit=8 latency_samples=0")
    assert f"| run (predictions in {Path(str(result.results_folder)).relative_to(tmp_path)})" in lines[0]
    assert lines[1].endswith("/run: results.csv, report.html, pareto_tflops.png")
    assert not [noise for noise in NOISE if noise in output]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()  # the full config is in the job folder


def test_verbose_shows_the_config_and_third_party_output(tmp_path: Path) -> None:
    output = train_eval(tmp_path, "hydra.run.dir=run", "verbose=true")
    assert "configuration:" in output and "pipeline: significance=" in output
    assert "wandb:" in output


def test_a_resumed_job_prints_no_empty_dataloader_warning(tmp_path: Path) -> None:
    train_eval(tmp_path, "hydra.run.dir=first", "logger=none")
    output = train_eval(tmp_path, "hydra.run.dir=again", "logger=none")
    assert "across ranks is zero" not in output and "Warning" not in output


@pytest.mark.parametrize(
    ("tflops", "expected"),
    [
        ([0.00055], (1e6, "MFLOPs")),
        ([0.0000005], (1e9, "kFLOPs")),
        ([0.002, 0.0004], (1e3, "GFLOPs")),
        ([3.2, 0.4], (1.0, "TFLOPs")),
        ([], (1e12, "FLOPs")),
    ],
)
def test_flops_units_read_without_leading_zeros(tflops: list[float], expected: tuple[float, str]) -> None:
    assert flops_unit(tflops) == expected


def test_format_flops() -> None:
    assert format_flops(0.000551) == "551 MFLOPs"
    assert format_flops(12.5) == "12.5 TFLOPs"


def test_the_sweep_table_shows_what_varies() -> None:
    from tests.test_pareto import make_result

    results = [
        make_result(overrides=["keep=0.1", "data.limit=50"], accuracy_low=0.25, accuracy_high=0.75, tflops_total=0.001),
        make_result(overrides=["keep=0.5", "data.limit=50"], tflops_total=0.002),
    ]
    assert varying_overrides(results) == ["keep=0.1", "keep=0.5"]
    table = console_table(results).splitlines()
    assert table[0].split() == ["#", "varies", "metric", "[95%", "interval]", "tokens", "GFLOPs/sample"]
    assert table[1].split() == ["0", "keep=0.1", "easyvqa", "accuracy", "0.500", "[0.250,", "0.750]", "16.0", "1"]
    assert table[2].split() == ["1", "keep=0.5", "easyvqa", "accuracy", "0.500", "16.0", "2"]
