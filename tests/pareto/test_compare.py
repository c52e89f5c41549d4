"""Intervals and paired comparisons on a real sweep of the embedded model: result.json, results.csv, --compare."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fopru.data.base import Benchmark
from fopru.eval.result import RunResult
from fopru.eval.uncertainty import bootstrap_interval
from fopru.pareto.compare import compare_jobs, job_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two jobs of the default method on the same 12 samples: keep 0.1 and keep 1.0."""
    cwd = tmp_path_factory.mktemp("sweep")
    folder = cwd / "sweep"
    command = [
        sys.executable, str(ROOT / "train_eval.py"), "-m", "keep=0.1,1.0", "data.limit=12", "latency_samples=0",
        "logger=none", "figure_samples=0", f"hydra.sweep.dir={folder}", f"results_dir={cwd / 'results'}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    # Job folders say what each job overrides (results_dir, which does not tell jobs apart, is left out).
    jobs = sorted(path.name for path in folder.iterdir() if path.is_dir())
    assert jobs == [
        "0-data.limit=12,figure_samples=0,keep=0.1,latency_samples=0,logger=none",
        "1-data.limit=12,figure_samples=0,keep=1.0,latency_samples=0,logger=none",
    ]
    for job in jobs:
        (folder / job[0]).symlink_to(folder / job)  # short names for the tests below
    return folder


def test_each_result_holds_the_interval_of_its_own_records(sweep: Path) -> None:
    for job in ("0", "1"):
        result, benchmark, records = job_records(sweep / job)
        assert isinstance(benchmark, Benchmark) and len(records) == result.samples == 12
        expected = bootstrap_interval(records, benchmark.score, result.primary_metric, benchmark.BOOTSTRAP_UNIT)
        assert (result.accuracy_low, result.accuracy_high) == (expected.low, expected.high)
        assert result.accuracy_low is not None and result.accuracy_high is not None
        assert result.accuracy_low <= result.accuracy <= result.accuracy_high


def test_results_csv_holds_the_interval(sweep: Path) -> None:
    with (sweep / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    saved = [RunResult.load(sweep / job / "result.json") for job in ("0", "1")]
    assert [(float(row["accuracy_low"]), float(row["accuracy_high"])) for row in rows] == [
        (result.accuracy_low, result.accuracy_high) for result in saved
    ]


def test_a_job_compared_with_itself_differs_by_zero(sweep: Path) -> None:
    same = compare_jobs(sweep / "0", sweep / "0", resamples=200)
    assert (same.difference.value, same.difference.low, same.difference.high) == (0.0, 0.0, 0.0)


def test_the_command_line_compares_two_jobs(sweep: Path) -> None:
    command = [sys.executable, "-m", "fopru.pareto", str(sweep), "--compare", "0", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary["results"] == 2
    difference = compare_jobs(sweep / "0", sweep / "1")
    line = done.stdout.splitlines()[-1]
    assert line.startswith("accuracy on 12 shared samples: 0=")
    assert f"difference (b - a) {difference.difference.value:+.4g}" in line
    assert f"[{difference.difference.low:+.4g}, {difference.difference.high:+.4g}]" in line
