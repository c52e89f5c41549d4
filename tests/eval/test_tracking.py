"""Where a job's result goes besides result.json: W&B only when the chosen logger asks for it."""

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fopru.callbacks import ParetoCallback
from fopru.eval.result import RunResult
from fopru.eval.tracking import ResultLogger, logs_to_wandb

ROOT = Path(__file__).resolve().parents[2]


def result() -> RunResult:
    return RunResult(
        group="test", model="tiny_llava", data="easyvqa", strategy="rank", significance="focal", reorder="original",
        keep=0.25, keep_tokens=None, samples=4, kept_tokens=4.0, metrics={"accuracy": 0.5}, primary_metric="accuracy",
        tflops_prefill=0.1, tflops_total=0.2, latency=None, peak_memory_bytes=None, kv_cache_bytes=8.0,
        throughput=None, attention="sdpa", device="cpu",
    )  # fmt: skip


@pytest.mark.parametrize("environment", ["offline", "online"])
def test_logger_none_writes_no_wandb_run_whatever_wandb_mode_says(
    environment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", environment)
    config = OmegaConf.load(ROOT / "conf" / "logger" / "none.yaml")
    logger = ResultLogger(**{key: value for key, value in config.items() if key != "_target_"})  # type: ignore[arg-type]
    logger.log(result(), OmegaConf.create({"keep": 0.25}), tmp_path, name="job")
    assert not list(tmp_path.rglob("*run-*")), "logger=none created a W&B run"
    assert logger.lightning_logger("test", "job", tmp_path, "train") is False
    assert not logs_to_wandb(OmegaConf.create({"logger": config}))


def test_the_environment_still_chooses_between_offline_and_online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert ResultLogger(mode="offline").effective_mode == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert ResultLogger(mode="offline").effective_mode == "offline"
    assert logs_to_wandb(OmegaConf.create({"logger": OmegaConf.load(ROOT / "conf" / "logger" / "wandb.yaml")}))


def test_a_sweep_with_logger_none_writes_no_wandb_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = tmp_path / "0"
    job.mkdir()
    result().save(job)
    logger = OmegaConf.load(ROOT / "conf" / "logger" / "none.yaml")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "group": "test", "logger": logger})
    ParetoCallback().on_multirun_end(config)
    [row] = csv.DictReader((tmp_path / "results.csv").open())
    assert row["throughput"] == row["peak_memory_bytes"] == ""  # figures not measured: blank, not 0
    assert not list(tmp_path.rglob("*run-*")), "the sweep summary created a W&B run under logger=none"
