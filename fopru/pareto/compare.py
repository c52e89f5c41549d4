"""Paired comparison of two jobs on the samples they share (:func:`fopru.eval.uncertainty.paired_difference`).

A job's samples are those its benchmark config draws (``.hydra/config.yaml`` of its job folder: benchmark, ``limit``
and seed); its predictions are read from the results folder its ``result.json`` names, and scored with the
benchmark's own score function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fopru.components import build
from fopru.data.base import Benchmark
from fopru.eval.records import read_records
from fopru.eval.result import RESULT_FILE, RunResult
from fopru.eval.uncertainty import RESAMPLES, SEED, PairedDifference, paired_difference

JOB_CONFIG = Path(".hydra") / "config.yaml"


def job_records(job_dir: Path) -> tuple[RunResult, Benchmark, list[dict[str, Any]]]:
    """A job's result, its benchmark and the prediction records of its own samples."""
    job_dir = Path(job_dir)
    result = RunResult.load(job_dir / RESULT_FILE)
    if result.results_folder is None:
        raise ValueError(f"{job_dir / RESULT_FILE} names no results folder (written before it was recorded)")
    config = job_dir / JOB_CONFIG
    if not config.is_file():
        raise ValueError(f"{job_dir} has no {JOB_CONFIG}: cannot tell which samples the job scored")
    benchmark = build("data", OmegaConf.load(config).data, Benchmark)
    wanted = {str(sample) for sample in benchmark.load()["sample_id"]}
    records = [record for record in read_records(Path(result.results_folder)) if str(record["sample_id"]) in wanted]
    return result, benchmark, records


def compare_jobs(job_a: Path, job_b: Path, resamples: int = RESAMPLES, seed: int = SEED) -> PairedDifference:
    """``b - a`` of the primary metric of two jobs on the same benchmark, with its paired bootstrap interval."""
    result_a, benchmark, records_a = job_records(job_a)
    result_b, _, records_b = job_records(job_b)
    if (result_a.data, result_a.primary_metric) != (result_b.data, result_b.primary_metric):
        raise ValueError(
            f"{job_a} scores {result_a.data}/{result_a.primary_metric} but {job_b} scores "
            f"{result_b.data}/{result_b.primary_metric}: only jobs on the same benchmark compare"
        )
    return paired_difference(
        records_a, records_b, benchmark.score, result_a.primary_metric, benchmark.BOOTSTRAP_UNIT, resamples, seed
    )


def describe(difference: PairedDifference, job_a: Path, job_b: Path) -> str:
    """One line: both jobs' metric on their shared samples and ``b - a`` with its interval."""
    interval = difference.difference
    verdict = "excludes 0" if interval.low > 0 or interval.high < 0 else "includes 0: within sampling noise"
    return (
        f"{difference.metric} on {difference.samples} shared samples: {job_a}={difference.a:.4g}, "
        f"{job_b}={difference.b:.4g}; difference (b - a) {interval.value:+.4g} "
        f"[{interval.low:+.4g}, {interval.high:+.4g}] ({100 * interval.level:g}% paired bootstrap, "
        f"{interval.resamples} resamples; {verdict})"
    )
