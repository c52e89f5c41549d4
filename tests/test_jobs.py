"""The record of a sweep's jobs: the planned jobs, the latest sweep's folders, and what did not finish."""

import itertools
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from fopru import jobs
from fopru.components import CONFIG_DIR
from fopru.jobs import MAX_GROUP_LENGTH, start_sweep, sweep_label, sweep_name

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[path.stem for path in SWEEPS])
def test_the_planned_jobs_are_the_sweep_definitions_product(path: Path) -> None:
    # The sweep file itself, read as plain YAML (not through Hydra), against what the planner makes of it.
    params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=[f"+sweep={path.stem}", "seed=3"], return_hydra_config=True)
    planned = jobs.planned_jobs(cfg)
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    assert planned is not None and len(planned) == len(list(itertools.product(*axes)))
    expected = {frozenset([*job, f"+sweep={path.stem}", "seed=3"]) for job in itertools.product(*axes)}
    assert {frozenset(job) for job in planned} == expected


def test_only_the_latest_sweeps_jobs_count_and_unfinished_ones_are_named(tmp_path: Path) -> None:
    planned = [("keep=0.1", "seed=0"), ("keep=0.2", "seed=0"), ("keep=0.3", "seed=0")]
    jobs.start_sweep(tmp_path, planned[:2])
    for number in range(2):
        jobs.start_job(tmp_path / str(number), tmp_path, number, planned[number])
        (tmp_path / str(number) / "result.json").write_text("{}")
        jobs.end_job(tmp_path / str(number), None)
    jobs.start_sweep(tmp_path, planned)  # a second sweep in the same folder
    jobs.start_job(tmp_path / "0", tmp_path, 0, planned[0])
    assert not (tmp_path / "0" / "result.json").exists()  # the earlier job's result is gone from the reused folder
    jobs.end_job(tmp_path / "0", None)
    jobs.start_job(tmp_path / "1", tmp_path, 1, planned[1])
    jobs.end_job(tmp_path / "1", jobs.JobFailure("fopru: configuration error: keep=0.2 is bad", config_error=True))
    assert jobs.finished_job_folders(tmp_path) == [tmp_path / "0"]
    assert [(record.number, record.status) for record in jobs.unfinished_jobs(tmp_path)] == [
        (1, "failed"),
        (2, "started"),
    ]
    described = jobs.describe_unfinished(tmp_path)
    assert described == (
        3,
        "  #1 (keep=0.2): failed: fopru: configuration error: keep=0.2 is bad\n  #2 (keep=0.3): not started",
    )
    assert jobs.finished_job_folders(tmp_path / "0") is None  # no sweep record: every result counts


def test_varying_overrides() -> None:
    assert jobs.varying_overrides([("a=1", "b=2"), ("a=1", "b=3")]) == {"b"}
    assert jobs.varying_overrides([("a=1",), ("a=1", "c=0")]) == {"c"}
    assert jobs.varying_overrides([("a=1", "b=2")]) == {"a", "b"}


def test_job_folder_names_say_what_the_job_overrides() -> None:
    assert jobs.job_folder_name(3, "keep=0.1,strategy=row") == "3-keep=0.1,strategy=row"
    assert jobs.job_folder_name(0, "") == "0"
    assert jobs.job_folder_name(1, "model.checkpoint=/data/llava") == "1-model.checkpoint=_data_llava"
    assert len(jobs.job_folder_name(12, "keep=0.1," * 40)) == jobs.JOB_NAME_CHARACTERS


def test_the_resolver_names_a_job_folder() -> None:
    from omegaconf import OmegaConf

    jobs.register_resolvers()
    jobs.register_resolvers()  # twice is harmless
    config = OmegaConf.create(
        {"num": 2, "dirname": "keep=0.1,strategy=row", "subdir": "${fopru_job_name:${num},${dirname}}"}
    )
    assert config.subdir == "2-keep=0.1,strategy=row"


def test_a_sweep_is_named_after_what_varies_across_its_jobs(tmp_path: Path) -> None:
    planned = [
        ("keep=0.1", "strategy=rank", "data.limit=50"),
        ("keep=0.1", "strategy=row", "data.limit=50"),
        ("keep=0.5", "strategy=rank", "data.limit=50"),
        ("keep=0.5", "strategy=row", "data.limit=50"),
    ]
    assert sweep_label(planned) == "keep=0.1,0.5 strategy=rank,row"  # data.limit is the same in every job
    assert sweep_label([("keep=0.1",), ("keep=0.1",)]) is None
    assert sweep_label(None) is None and sweep_label([]) is None
    assert sweep_label([("model.checkpoint=a/b",), ("model.checkpoint=c/d",)]) == "model.checkpoint=a_b,c_d"
    long = sweep_label([(f"keep={0.001 * i:.3f}",) for i in range(1, 60)])
    assert long is not None and len(long) == MAX_GROUP_LENGTH and long.endswith("...")
    start_sweep(tmp_path / "named", planned)
    assert sweep_name(tmp_path / "named") == "keep=0.1,0.5 strategy=rank,row"
    start_sweep(tmp_path / "same", [("keep=0.1",)])
    assert sweep_name(tmp_path / "same") == "same"  # nothing varies: the folder's name
    assert sweep_name(tmp_path / "unrecorded") == "unrecorded"
