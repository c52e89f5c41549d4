"""The evaluation loop end to end: real Lightning runs (1 and 2 processes), real datasets, real W&B offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fopru.eval.records import read_records
from fopru.eval.result import RunResult

ROOT = Path(__file__).resolve().parents[2]
BASE = ["stage=eval", "data.limit=12", "batch_size=3", "latency_samples=2", "latency_warmup=1"]


def train_eval(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train_eval.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=environment,
    )


def predictions(results: Path) -> dict[str, str]:
    [folder] = {path.parent for path in results.rglob("predictions.rank*.jsonl")}
    return {record["sample_id"]: record["prediction"] for record in read_records(folder)}


def result_files(root: Path) -> list[RunResult]:
    return [RunResult.load(path) for path in sorted(root.rglob("result.json")) if "results" not in path.parts]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CPU process over 12 easy-vqa samples: the reference for the other runs."""
    cwd = tmp_path_factory.mktemp("single")
    run = train_eval(*BASE, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return cwd


def test_a_run_scores_every_sample_and_records_its_costs(single_process: Path) -> None:
    [result] = result_files(single_process / "outputs")
    records = read_records(next((single_process / "results").rglob("predictions.rank0.jsonl")).parent)
    assert result.samples == len(records) == 12
    assert result.kept_tokens == 64  # rank at keep 0.25 of the default model's 256 patches
    assert result.metrics == {"accuracy": sum(r["prediction"] == r["answer"] for r in records) / 12}
    assert result.latency is not None and result.latency.total > 0
    assert result.tflops_total > result.tflops_prefill > 0
    folder = next((single_process / "results").rglob("config.yaml")).parent
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["versions"]["transformers"] and provenance["versions"]["lightning"]
    assert list((single_process / "outputs").rglob("offline-run-*")), "no offline W&B run was written"


def test_two_ddp_processes_give_the_single_process_predictions(single_process: Path, tmp_path: Path) -> None:
    run = train_eval(*BASE, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = sorted(path.name for path in (tmp_path / "results").rglob("predictions.rank*.jsonl"))
    assert ranks == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]
    assert predictions(tmp_path / "results") == predictions(single_process / "results")
    [ddp] = result_files(tmp_path / "outputs")
    [single] = result_files(single_process / "outputs")
    assert ddp.samples == 12 and ddp.metrics == single.metrics and ddp.kept_tokens == single.kept_tokens


def test_ddp_inside_a_multirun_runs_each_job_once(tmp_path: Path) -> None:
    run = train_eval(
        *BASE, "latency_samples=0", "keep=0.25,0.5", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "-m", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = result_files(tmp_path / "multirun")
    assert sorted(result.keep for result in results) == [0.25, 0.5]
    assert all(result.samples == 12 for result in results)
    assert len({result.group for result in results}) == 1  # one W&B group for the sweep
    assert run.stdout.count("Launching 2 jobs") + run.stderr.count("Launching 2 jobs") == 1


def test_a_killed_run_resumes_where_it_stopped(single_process: Path, tmp_path: Path) -> None:
    arguments = [*BASE, "batch_size=2", "latency_samples=0"]
    command = [sys.executable, str(ROOT / "train_eval.py"), *arguments]
    environment = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    written = 0
    while time.monotonic() < deadline and process.poll() is None:
        files = list((tmp_path / "results").rglob("predictions.rank0.jsonl"))
        written = len(files[0].read_text().splitlines()) if files else 0
        if written >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= written < 12, f"the run was not interrupted mid-way ({written} predictions)"
    interrupted = len(read_records(next((tmp_path / "results").rglob("predictions.rank0.jsonl")).parent))
    assert interrupted < 12
    resumed = train_eval(*arguments, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{interrupted} samples already predicted" in resumed.stdout + resumed.stderr
    assert predictions(tmp_path / "results") == predictions(single_process / "results")
