"""The Hydra callbacks on real runs and multiruns, the launchers' configs and the sweep definitions."""

import csv
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fopru import jobs
from fopru.callbacks import OneGpuPerWorker, ParetoCallback, claim_gpu, lock_file_name, sweep_group
from fopru.components import CONFIG_DIR
from fopru.pareto import collect
from fopru.run import run

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

# A stand-in for train_eval.py whose jobs write a result.json: accuracy and cost follow from strategy and keep.
APP = """
import os
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fopru.eval.result import Latency, RunResult


@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg: DictConfig) -> None:
    if cfg.budget == cfg.crash_at:
        raise RuntimeError(f"crashed at budget {cfg.budget}")
    if cfg.budget == cfg.hang_at:
        time.sleep(120)
    bonus = {"rank": 0.0, "row": 0.1}[cfg.approach]
    RunResult(
        group=str(cfg.group), model="tiny_llava", data="easyvqa", strategy=cfg.approach, significance="focal",
        reorder="original", keep=cfg.budget, keep_tokens=None, samples=4, kept_tokens=576 * cfg.budget,
        metrics={"accuracy": cfg.budget / 2 + bonus}, primary_metric="accuracy", tflops_prefill=cfg.budget,
        tflops_total=cfg.budget + 0.1, latency=Latency(0.01, 0.001, cfg.budget, 0.01, cfg.budget + bonus),
        peak_memory_bytes=0, kv_cache_bytes=1.0, throughput=1.0, attention="sdpa",
        device=f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}@{os.getpid()}",
    ).save(HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
"""

APP_CONFIG = f"""
defaults:
  - override hydra/callbacks: pareto
  - _self_
hydra:
  searchpath: ["file://{CONFIG_DIR}"]
group: app-sweep
approach: rank  # not "strategy"/"keep"/"method": the search path brings in the repo's groups of those names
budget: 0.5
crash_at: null  # the job at this budget raises
hang_at: null   # the job at this budget sleeps for two minutes
"""


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb-elsewhere"),
        "WANDB_SILENT": "true",
        "HYDRA_FULL_ERROR": "1",
    }


def run_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conf").mkdir(exist_ok=True)
    (tmp_path / "conf" / "app.yaml").write_text(APP_CONFIG)
    (tmp_path / "app.py").write_text(APP)
    return subprocess.run(
        [sys.executable, str(tmp_path / "app.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
    )


def train_eval(tmp_path: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run train_eval.py with each argument list, all at once, in parallel."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "train_eval.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=subprocess_env(tmp_path),
        )
        for args in commands
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def launched_jobs(output: str) -> list[str]:
    return re.findall(r"#\d+ : (.*)", output)


# --- the pareto callback ------------------------------------------------------------------------------------------


def test_sweep_group_prefers_the_group_key(tmp_path: Path) -> None:
    assert sweep_group(OmegaConf.create({"group": "strategies"}), tmp_path / "12-00-00") == "strategies"
    assert sweep_group(OmegaConf.create({"group": None}), tmp_path / "12-00-00") == "12-00-00"
    assert sweep_group(OmegaConf.create({}), tmp_path / "12-00-00") == "12-00-00"
    jobs.start_sweep(tmp_path / "12-00-01", [("keep=0.1", "strategy=row"), ("keep=0.5", "strategy=row")])
    assert sweep_group(OmegaConf.create({"group": None}), tmp_path / "12-00-01") == "keep=0.1,0.5"
    assert sweep_group(OmegaConf.create({"group": "strategies"}), tmp_path / "12-00-01") == "strategies"


def test_the_callback_logs_instead_of_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("fopru.callbacks.summarize_sweep", broken)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "runtime": {"output_dir": str(tmp_path)}}})
    ParetoCallback().on_multirun_end(config)
    ParetoCallback().on_run_end(config)
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 2 and all(record.exc_info for record in errors)
    ParetoCallback().on_multirun_end(OmegaConf.create({}))  # not even a sweep folder: still no exception


def test_multirun_writes_the_summary_into_the_sweep_folder(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(tmp_path, "-m", "approach=rank,row", "budget=0.1,0.5", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr
    assert len(launched_jobs(result.stdout + result.stderr)) == 4
    lines = (sweep / "results.csv").read_text().splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("group,model,data,strategy,significance,reorder,llm_pruning,method,keep,")
    # row is 0.1 more accurate at the same TFLOPs (and 0.1 s slower): it alone is on the TFLOPs front.
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert [(row["strategy"], row["keep"], row["pareto_tflops"]) for row in rows] == [
        ("rank", "0.1", "False"),
        ("rank", "0.5", "False"),
        ("row", "0.1", "True"),
        ("row", "0.5", "True"),
    ]
    assert [row["pareto_latency"] for row in rows] == ["True", "True", "True", "True"]
    assert (sweep / "pareto_tflops.png").stat().st_size > 0
    assert (sweep / "pareto_latency.png").stat().st_size > 0
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("files/media/table/results_*.table.json"))
    assert b"app-sweep" in next(run_dir.glob("run-*.wandb")).read_bytes()  # the config's group key


def test_a_single_run_gets_the_table_and_plots_in_its_run_folder(tmp_path: Path) -> None:
    result = run_app(tmp_path, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "run" / "results.csv").read_text().splitlines()) == 2
    assert (tmp_path / "run" / "pareto_tflops.png").exists()
    assert not (tmp_path / "run" / "wandb").exists()  # the job logs to W&B itself


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "results.csv").open() as file:
        return list(csv.DictReader(file))


def test_a_reused_sweep_folder_summarizes_only_its_latest_sweeps_jobs(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    quiet = ["-m", f"hydra.sweep.dir={sweep}", "hydra.callbacks.pareto.log_to_wandb=false"]
    first = run_app(tmp_path, *quiet, "approach=rank,row", "budget=0.1,0.5")
    assert first.returncode == 0, first.stderr
    assert len(summary_rows(sweep)) == 4
    second = run_app(tmp_path, *quiet, "approach=row", "budget=0.2,0.3")
    assert second.returncode == 0, second.stderr
    assert (sweep / "3" / "result.json").exists()  # the first sweep's last jobs are still there ...
    assert [(row["strategy"], row["keep"]) for row in summary_rows(sweep)] == [("row", "0.2"), ("row", "0.3")]
    # ... and a failing job in a folder that holds an earlier result: neither that result nor the failure's
    # traceback stops the summary of what finished, and the failed job is named.
    third = run_app(tmp_path, *quiet, "approach=rank", "budget=0.4,0.6", "crash_at=0.6")
    assert third.returncode == 1
    assert [(row["strategy"], row["keep"]) for row in summary_rows(sweep)] == [("rank", "0.4")]
    output = third.stdout + third.stderr
    assert "1 of 2 jobs of the sweep" in output
    assert "#1 (budget=0.6): failed: RuntimeError: crashed at budget 0.6" in output


def test_a_terminated_sweep_is_summarized_from_the_jobs_that_finished(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run_app(tmp_path, "--help")  # writes the app and its config
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py"), "-m", "budget=0.1,0.2,0.3", "hang_at=0.2",
         f"hydra.sweep.dir={sweep}", "hydra.callbacks.pareto.log_to_wandb=false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=subprocess_env(tmp_path),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (sweep / "1" / "job.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.terminate()  # SIGTERM, as kill or a scheduler sends it
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert [row["keep"] for row in summary_rows(sweep)] == ["0.1"]
    assert "2 of 3 jobs of the sweep" in output
    assert "#1 (budget=0.2): interrupted" in output and "#2 (budget=0.3): not started" in output


TINY_JOBS = [
    "model=tiny_llava",
    "batch_size=1",
    "latency_samples=0",
    "figure_samples=1",
    "logger=none",
    "hydra.callbacks.pareto.log_to_wandb=false",
]


def test_a_late_bad_value_leaves_the_summary_of_the_jobs_that_finished(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (result,) = train_eval(
        tmp_path,
        [
            "-m",
            *TINY_JOBS,
            "data.limit=6",
            "keep=0.25,1.5,0.5",
            f"hydra.sweep.dir={sweep}",
            f"results_dir={tmp_path}/r",
        ],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert [row["keep"] for row in summary_rows(sweep)] == ["0.25", "0.5"]
    assert (sweep / "pareto_tflops.png").stat().st_size > 0 and (sweep / "kept_patches.png").stat().st_size > 0
    assert "1 of 3 jobs of the sweep" in output
    assert "#1 (keep=1.5): failed: fopru: configuration error: keep=1.5 is not a valid budget" in output
    assert "Traceback" not in output


def test_an_interrupted_sweep_is_summarized_and_rerunning_it_finishes_it(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = [*TINY_JOBS, "data.limit=24", "keep=0.25,0.5,1.0", f"hydra.sweep.dir={sweep}", f"results_dir={tmp_path}"]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train_eval.py"), "-m", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
    )
    deadline = time.monotonic() + 120
    while not list(sweep.glob("1-*/job.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)  # Ctrl-C while the second job runs
    output, _ = process.communicate(timeout=120)
    assert process.returncode in (1, 130), output  # 1 when Lightning's predict loop caught the interrupt
    assert [row["keep"] for row in summary_rows(sweep)] == ["0.25"], output
    assert "#2 (keep=1.0): not started" in output
    assert re.search(r"#1 \(keep=0.5\): interrupted", output)
    (rerun,) = train_eval(tmp_path, ["-m", *command])
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    assert [row["keep"] for row in summary_rows(sweep)] == ["0.25", "0.5", "1.0"]
    assert re.search(r"resuming in .*keep0.25-\w+: 24 samples already predicted", output)
    assert "did not finish" not in output


# --- the default sweep and the sweep definitions ------------------------------------------------------------------


def test_a_bare_multirun_sweeps_keep_and_command_line_values_replace_it(tmp_path: Path) -> None:
    bare, one = train_eval(
        tmp_path,
        ["stage=validate", f"hydra.sweep.dir={tmp_path / 'default'}", "-m"],
        ["stage=validate", "strategy=row", "keep=0.05", f"hydra.sweep.dir={tmp_path / 'one'}", "-m"],
    )
    assert bare.returncode == 0, bare.stderr
    output = bare.stdout + bare.stderr
    assert [sorted(job.split()) for job in launched_jobs(output)] == [
        ["keep=" + keep, "stage=validate"] for keep in ("0.05", "0.1", "0.25", "0.5", "1.0")
    ]
    assert "nothing to summarize" in output  # stage=validate writes no result.json; the callback copes
    # Job folders say what each job overrides.
    assert sorted(path.name for path in (tmp_path / "default").iterdir() if path.is_dir()) == [
        f"{number}-keep={keep},stage=validate" for number, keep in enumerate(("0.05", "0.1", "0.25", "0.5", "1.0"))
    ]
    assert one.returncode == 0, one.stderr
    assert [sorted(job.split()) for job in launched_jobs(one.stdout + one.stderr)] == [
        ["keep=0.05", "stage=validate", "strategy=row"]
    ]


def sweep_header(path: Path) -> tuple[str, int]:
    """The command and the job count a sweep file's header comment states."""
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    commands = [line.lstrip("# ") for line in header if line.lstrip("# ").startswith("python train_eval.py -m ")]
    counts = [int(match) for line in header for match in re.findall(r"(\d+) jobs\b", line)]
    assert commands and counts, f"{path.name}: its header must state the command and '<N> jobs'"
    return commands[0], counts[0]


def test_sweep_presets_have_one_home() -> None:
    # conf/sweep is the sweeps/ folder itself (a link), so a preset is written once and Hydra finds it.
    assert (CONFIG_DIR / "sweep").resolve() == (ROOT / "sweeps").resolve()
    assert SWEEPS


@pytest.mark.parametrize("path", SWEEPS, ids=[path.stem for path in SWEEPS])
def test_sweep_definitions_state_their_command_and_jobs_and_compose(path: Path) -> None:
    command, count = sweep_header(path)
    assert command == f"python train_eval.py -m +sweep={path.stem}"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=[f"+sweep={path.stem}"], return_hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert isinstance(params, dict)
        assert cfg.group == path.stem
        axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
        jobs = list(itertools.product(*axes))
        assert len(jobs) == count
        for overrides in jobs:  # every job of the sweep passes stage=validate
            run(compose(config_name="train_eval", overrides=[f"+sweep={path.stem}", "stage=validate", *overrides]))


# --- one GPU per joblib worker ------------------------------------------------------------------------------------


def test_joblib_workers_each_keep_a_gpu_of_their_own(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_app(
        tmp_path,
        "-m",
        "approach=rank,row",
        "budget=0.1,0.2",
        "hydra/launcher=joblib_gpus",
        "hydra.launcher.n_jobs=8",
        "hydra.callbacks.gpu_per_worker.gpus=[a,b]",
        "hydra.callbacks.pareto.log_to_wandb=false",
        f"hydra.callbacks.gpu_per_worker.lock_dir={tmp_path / 'locks'}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr
    assert "Joblib.Parallel(n_jobs=2," in result.stdout + result.stderr  # at most one worker per GPU
    results = collect(sweep)
    assert len(results) == 4
    device_of_pid: dict[str, set[str]] = {}
    for job in results:
        device, pid = job.device.split("@")
        device_of_pid.setdefault(pid, set()).add(device)
    assert all(len(devices) == 1 for devices in device_of_pid.values())  # a worker never changes GPU
    devices = [next(iter(devices)) for devices in device_of_pid.values()]
    assert len(devices) == len(set(devices)) and set(devices) <= {"a", "b"}  # no two workers share one
    assert (sweep / "results.csv").exists()  # both callbacks ran


def test_claim_gpu_skips_gpus_locked_by_other_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    monkeypatch.setattr("fopru.callbacks._claimed", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    tmp_path.joinpath(lock_file_name("0")).touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(tmp_path / lock_file_name("0"))],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert claim_gpu(["0", "1"], tmp_path) == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert claim_gpu(["0", "1"], tmp_path) == "1"  # kept for the process's life
        with open(tmp_path / lock_file_name("1")) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held against every other open file
    finally:
        holder.kill()
        holder.wait()
        import fopru.callbacks

        if fopru.callbacks._claimed is not None:
            os.close(fopru.callbacks._claimed[1])
    assert lock_file_name("GPU-8f3c/1 x") == "gpu-GPU-8f3c_1_x.lock"


def test_one_gpu_per_worker_sets_n_jobs_to_the_gpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    for asked, used in [(-1, 2), (8, 2), (1, 1)]:
        config = OmegaConf.create({"hydra": {"launcher": {"n_jobs": asked}}})
        OmegaConf.set_readonly(config, True)
        callback = OneGpuPerWorker()
        callback.on_multirun_start(config)
        assert callback.gpus == ["3", "5"]
        assert config.hydra.launcher.n_jobs == used


# --- launcher configs ---------------------------------------------------------------------------------------------


def test_the_slurm_launcher_config_composes_and_instantiates(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train_eval",
            overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == 4 and launcher.partition is None and launcher.timeout_min == 240
    assert type(instantiate(launcher)).__name__ == "SlurmLauncher"
