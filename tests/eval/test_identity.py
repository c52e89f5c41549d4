"""What a results folder is named after: the weights' content, the prompt template, generation and precision."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from fopru.components import CONFIG_DIR, load
from fopru.data.easyvqa import EasyVQABenchmark
from fopru.eval.evaluate import (
    job_identity,
    peak_resident_memory,
    reset_peak_resident_memory,
    results_folder,
    score_and_measure,
)
from fopru.eval.locking import exclusive_results_folder
from fopru.models import loading
from fopru.models.base import TargetModel
from fopru.models.loading import checkpoint_fingerprint


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train_eval", overrides=["model=tiny_llava", *overrides])


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FOPRU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def checkpoint(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llava"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_new_weights_at_the_same_path_get_a_new_fingerprint(tmp_path: Path, private_cache: Path) -> None:
    folder = checkpoint(tmp_path / "ckpt", b"\x00" * 64)
    first = checkpoint_fingerprint(str(folder))
    assert first == checkpoint_fingerprint(str(folder))
    (folder / "train.log").write_text("not read by from_pretrained")
    assert checkpoint_fingerprint(str(folder)) == first
    time.sleep(0.01)
    (folder / "model.safetensors").write_bytes(b"\x01" * 64)  # same size, new content (as stage=train writes it)
    assert checkpoint_fingerprint(str(folder)) != first


def test_file_digests_are_cached_by_size_and_modification_time(tmp_path: Path, private_cache: Path) -> None:
    folder = checkpoint(tmp_path / "ckpt", b"\x00" * 64)
    first = checkpoint_fingerprint(str(folder))
    cache = json.loads((private_cache / "fingerprints.json").read_text())
    assert str((folder / "model.safetensors").resolve()) in cache
    # Different bytes behind the same size and modification time: the cached digest is used, the file not re-read.
    weights = folder / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 64)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint_fingerprint(str(folder)) == first


def test_a_hub_checkpoint_is_identified_by_its_cached_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--org--model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    checkpoint(repo / "snapshots" / commit, b"\x00")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert checkpoint_fingerprint("org/model") == f"hub:org/model@{commit}"


def test_the_identity_follows_weights_prompt_template_generation_and_precision(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = load("model", "tiny_llava", TargetModel).load()
    benchmark = EasyVQABenchmark(limit=2)
    cfg = config()
    base = results_folder(cfg, job_identity(cfg, target, benchmark))
    assert results_folder(cfg, job_identity(cfg, target, benchmark)) == base
    # Lightning's spellings of the default precision are one precision; another one is another folder.
    for same in ("+trainer.precision=32", "+trainer.precision=32-true"):
        assert results_folder(config(same), job_identity(config(same), target, benchmark)) == base
    bf16 = config("+trainer.precision=bf16-mixed")
    assert results_folder(bf16, job_identity(bf16, target, benchmark)) != base
    # A code change to the adapter's prompt template or to the generation length.
    with monkeypatch.context() as patch:
        patch.setattr(type(target), "prompt_template", "USER: <image>\n{text}\nASSISTANT:")
        changed_prompt = results_folder(cfg, job_identity(cfg, target, benchmark))
    with monkeypatch.context() as patch:
        patch.setattr(type(benchmark), "max_new_tokens", 32)
        changed_generation = results_folder(cfg, job_identity(cfg, target, benchmark))
    with monkeypatch.context() as patch:
        patch.setattr(target, "fingerprint", lambda: "sha256:other")
        changed_weights = results_folder(cfg, job_identity(cfg, target, benchmark))
    assert len({base, changed_prompt, changed_generation, changed_weights}) == 4
    assert loading.fingerprint_cache().is_relative_to(private_cache)


def _hold(folder: str, seconds: float, started: object) -> None:
    with exclusive_results_folder(Path(folder)):
        started.set()  # type: ignore[attr-defined]
        time.sleep(seconds)


def test_a_second_run_waits_for_the_folder_lock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    context = multiprocessing.get_context("fork")
    started = context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), 1.5, started))
    holder.start()
    assert started.wait(30)
    before = time.monotonic()
    with exclusive_results_folder(tmp_path):
        waited = time.monotonic() - before
    holder.join()
    assert waited > 0.5, "the lock was not held by the other process"
    assert f"pid {holder.pid}" in caplog.text and "waiting for it to finish" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: /proc/self/clear_refs")
def test_the_peak_resident_memory_is_reset_per_job() -> None:
    assert reset_peak_resident_memory() is None  # Linux: /proc/self/clear_refs
    baseline = peak_resident_memory()
    assert baseline is not None
    block = bytearray(256 * 1024 * 1024)  # touched: resident
    lifetime = peak_resident_memory()
    del block
    assert lifetime is not None and lifetime >= baseline + 200 * 1024 * 1024
    assert reset_peak_resident_memory() is None
    after = peak_resident_memory()
    assert after is not None and after < lifetime - 200 * 1024 * 1024


def test_missing_predictions_are_reported_loudly_and_in_the_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config("latency_samples=0", "group=test")
    target = load("model", "tiny_llava", TargetModel).load()
    benchmark = EasyVQABenchmark(limit=3)
    rows = [dict(benchmark.load()[index]) for index in range(3)]
    record = {"visual_tokens": 9, "tflops_prefill": 1.0, "tflops_total": 2.0, "kv_cache_bytes": 8.0}
    records = [{**rows[0], **record, "prediction": "yes"}, {**rows[1], **record, "prediction": "no"}]
    wanted = {str(row["sample_id"]) for row in rows}
    result = score_and_measure(cfg, None, target, benchmark, tmp_path, records, wanted, set(), 1.0, 1)  # type: ignore[arg-type]
    assert result.samples == 2 and result.samples_requested == 3
    assert "ONLY 2 OF THE 3 REQUESTED SAMPLES" in caplog.text
    assert result.peak_memory_bytes is None and "latency_samples=0" in result.unavailable["peak_memory_bytes"]
