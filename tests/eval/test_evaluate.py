"""The evaluation loop end to end: real Lightning runs (1 and 2 processes), real datasets, real W&B offline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch

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
    [run] = json.loads((folder / "provenance.json").read_text())["runs"]
    assert run["versions"]["transformers"] and run["versions"]["lightning"]
    assert run["predictions_before"] == 0 and run["predictions_added"] == 12
    assert result.samples_requested == 12 and result.throughput_samples == 12 and result.unavailable == {}
    assert result.throughput is not None and result.throughput > 0
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0
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
    [result] = result_files(tmp_path / "outputs")  # the killed run wrote none
    assert result.samples == 12 and result.throughput_samples == 12 - interrupted


def test_a_fully_resumed_run_reports_no_throughput_instead_of_zero(single_process: Path, tmp_path: Path) -> None:
    shutil.copytree(single_process / "results", tmp_path / "results")
    run = train_eval(*BASE, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "12 samples already predicted" in run.stdout + run.stderr
    [result] = result_files(tmp_path / "outputs")
    [reference] = result_files(single_process / "outputs")
    assert result.samples == result.samples_requested == 12 and result.metrics == reference.metrics
    assert result.throughput is None and result.throughput_samples is None
    assert "predicted by earlier runs" in result.unavailable["throughput"]
    [folder] = {path.parent for path in (tmp_path / "results").rglob("provenance.json")}
    runs = json.loads((folder / "provenance.json").read_text())["runs"]
    assert [(run["predictions_before"], run["predictions_added"]) for run in runs] == [(0, 12), (12, 0)]


def test_new_weights_at_the_same_checkpoint_path_are_not_resumed_from(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(ROOT / "fopru" / "checkpoints" / "mini_llava", checkpoint)
    arguments = [*BASE, "data.limit=4", "latency_samples=0", "figure_samples=0", f"model.checkpoint={checkpoint}"]
    first = train_eval(*arguments, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    weights = safetensors.torch.load_file(checkpoint / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0  # retrained weights saved where the old ones were (train.output=<that folder>)
    safetensors.torch.save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    second = train_eval(*arguments, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already predicted" not in second.stdout + second.stderr
    folders = {path.parent for path in (tmp_path / "results").rglob("predictions.rank0.jsonl")}
    assert len(folders) == 2 and all(len(read_records(folder)) == 4 for folder in folders)


def test_two_runs_of_one_configuration_at_once_predict_each_sample_once(tmp_path: Path) -> None:
    arguments = [*BASE, "latency_samples=0", "figure_samples=0"]
    command = [sys.executable, str(ROOT / "train_eval.py"), *arguments]
    environment = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    runs = [subprocess.Popen(command, cwd=tmp_path, env=environment, **output) for _ in range(2)]  # type: ignore[call-overload]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    [file] = (tmp_path / "results").rglob("predictions.rank0.jsonl")
    lines = [json.loads(line)["sample_id"] for line in file.read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 12
    assert sum("waiting for it to finish" in output for output in outputs) == 1
    jobs = sorted(path.parent for path in (tmp_path / "outputs").rglob("result.json"))
    assert len(jobs) == 2, f"both runs wrote into one output folder: {jobs}"
    assert all(RunResult.load(job / "result.json").samples == 12 for job in jobs)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
def test_other_ddp_ranks_stop_writing_when_rank_0_dies(tmp_path: Path) -> None:
    arguments = [*BASE, "data.limit=400", "batch_size=1", "latency_samples=0", "trainer=ddp", "trainer.accelerator=cpu",
                 "trainer.devices=2"]  # fmt: skip
    command = [sys.executable, str(ROOT / "train_eval.py"), *arguments]
    environment = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def lines() -> int:
        files = list((tmp_path / "results").rglob("predictions.rank1.jsonl"))
        return len(files[0].read_text().splitlines()) if files else 0

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and lines() < 3:
        time.sleep(0.05)
    children = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = lines()
    assert 3 <= at_kill < 100 and children, f"rank 1 had written {at_kill} predictions; children {children}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(child) for child in children):
        time.sleep(0.1)
    survivors = [child for child in children if _alive(child)]
    for child in survivors:
        os.kill(child, signal.SIGKILL)
    assert not survivors, "rank 1 kept running after rank 0 died"
    assert lines() <= at_kill + 1  # at most the batch it was appending when rank 0 died
