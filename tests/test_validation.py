"""Bad input is refused with one message naming the value and the valid choices, before any weights load."""

import os
import shutil
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from fopru.cli import check_command_line
from fopru.components import CONFIG_DIR, choices
from fopru.errors import ConfigError
from fopru.models.base import TargetModel
from fopru.models.loading import EMBEDDED_DIR, safetensors_problem
from fopru.run import run
from fopru.validation import check_method_preset, check_trainer_devices, method_groups

MINI = EMBEDDED_DIR / "mini_llava"


def compose_run(*overrides: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["logger=none", *overrides])
    run(cfg)


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any weight loading fails the test: every refusal must come before it."""

    def refuse(self: TargetModel) -> TargetModel:
        raise AssertionError(f"weights of {self.checkpoint} were loaded before the configuration was refused")

    monkeypatch.setattr(TargetModel, "load", refuse)
    monkeypatch.chdir(tmp_path)


def checkpoint_copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(MINI, folder)
    return folder


def corrupt(tmp_path: Path, how: str) -> Path:
    """A copy of the embedded checkpoint whose model.safetensors is broken in one way."""
    folder = checkpoint_copy(tmp_path, how)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "not-safetensors":
        weights.write_bytes(b"<html>404 Not Found</html>" + bytes(64))
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "header-too-long":
        weights.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    return folder


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
# id -> (overrides built under tmp_path, a fragment of the expected message)
BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], Callable[[Path], str]]] = {
    "batch0": (lambda _: ["batch_size=0"], lambda _: "batch_size=0 must be an integer >= 1"),
    "batch-1": (lambda _: ["batch_size=-1"], lambda _: "batch_size=-1 must be an integer >= 1"),
    "seed": (lambda _: ["seed=abc"], lambda _: "seed='abc' must be an integer"),
    "figures": (lambda _: ["figure_samples=-1"], lambda _: "figure_samples=-1 must be an integer >= 0"),
    "latency": (lambda _: ["latency_samples=-2"], lambda _: "latency_samples=-2 must be an integer >= 0"),
    "attention": (
        lambda _: ["model.attn_implementation=fast"],
        lambda _: "model.attn_implementation='fast' is not one of ['eager', ",
    ),
    "devices0": (lambda _: ["trainer.devices=0"], lambda _: "trainer.devices=0 is not a count >= 1, -1"),
    "typo-key": (lambda _: ["+stratgy=row"], lambda _: "unknown key 'stratgy' (did you mean strategy?)"),
    "results-dir": (
        lambda tmp: [f"results_dir={a_file(tmp)}/results"],
        lambda tmp: f"results_dir='{tmp}/a-file/results' cannot be created: '{tmp}/a-file' is a file",
    ),
    "missing-checkpoint": (
        lambda tmp: [f"model.checkpoint={tmp}/missing"],
        lambda tmp: f"checkpoint '{tmp}/missing' is not a folder: no such path",
    ),
    "empty-checkpoint": (
        lambda tmp: [f"model.checkpoint={empty_folder(tmp)}"],
        lambda _: "has no config.json (it holds nothing)",
    ),
    "keep-tokens": (lambda _: ["keep_tokens=300"], lambda _: "keep_tokens=300 is more than the 256 visual tokens"),
    "layer-high": (
        lambda _: ["significance.layer=5"],
        lambda _: "significance.layer=5 is outside the vision encoder of 'embedded:mini_llava', which has 5 layers",
    ),
    "layer-low": (lambda _: ["significance.layer=-6"], lambda _: "choose -5 <= significance.layer <= 4"),
    "tap-layer": (lambda _: ["model.tap_layer=7"], lambda _: "model.tap_layer=7 is outside the vision encoder"),
    "limit": (lambda _: ["data.limit=9674"], lambda _: "limit=9674 is more than the 9673 samples it has"),
    "hub-data": (lambda _: ["data=pope"], lambda _: "dataset 'lmms-lab/POPE' (config None, split 'test') could not"),
    **{
        f"weights-{how}": (
            lambda tmp, how=how: [f"model.checkpoint={corrupt(tmp, how)}"],
            lambda tmp, how=how: f"checkpoint '{tmp}/{how}': model.safetensors is corrupted",
        )
        for how in ("truncated", "not-safetensors", "empty", "header-too-long")
    },
    "cuda": (lambda _: ["model.device=cuda"], lambda _: "model.device='cuda' but this machine has no CUDA device"),
    "gpu-trainer": (lambda _: ["trainer=gpu"], lambda _: "trainer.accelerator='gpu' but this machine has no CUDA"),
}


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=NO_CUDA if name in ("cuda", "gpu-trainer") else ()) for name in BAD_INPUTS]
)
def test_every_bad_input_is_refused_before_weights_load(tmp_path: Path, no_weights: None, case: str) -> None:
    overrides, message = BAD_INPUTS[case]
    with pytest.raises(ConfigError) as error:
        compose_run(*overrides(tmp_path))
    assert message(tmp_path) in str(error.value)
    assert "\n" not in str(error.value)


def test_the_checks_accept_the_defaults_and_good_neighbours(tmp_path: Path, no_weights: None) -> None:
    # Each passes every check and then reaches the weights (the no_weights guard), and no earlier.
    for overrides in (
        [],
        ["batch_size=1", "figure_samples=0", "keep_tokens=256", "significance.layer=-5", "data.limit=9673"],
        [f"model.checkpoint={checkpoint_copy(tmp_path, 'good')}", "trainer.devices=1", "seed=-3"],
    ):
        with pytest.raises(AssertionError, match="were loaded before"):
            compose_run(*overrides)


def test_stage_validate_reads_the_config_only(tmp_path: Path, no_weights: None) -> None:
    compose_run("stage=validate", "data=pope", "model=llava15_7b")  # no hub, no CUDA needed to validate
    with pytest.raises(ConfigError, match="batch_size=0"):
        compose_run("stage=validate", "batch_size=0")


def test_the_wandb_folder_must_be_writable(tmp_path: Path, no_weights: None, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "a-file" / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train_eval", overrides=["logger=wandb"])
    with pytest.raises(ConfigError, match=r"WANDB_DIR='.*a-file/wandb' cannot be created"):
        run(cfg)


def test_safetensors_header_check_agrees_with_the_safetensors_library(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.int64)}, str(path))
    whole = path.read_bytes()
    variants = {
        "whole": whole,
        "cut in the data": whole[:-7],
        "cut in the header": whole[:20],
        "no header": whole[:5],
        "garbage": b"\x00" * 8 + whole[8:],
        "wrong length": struct.pack("<Q", 3) + whole[8:],
        "html": b"<!doctype html><title>Not found</title>" * 4,
    }
    for name, data in variants.items():
        path.write_bytes(data)
        try:
            with safe_open(str(path), framework="pt") as opened:
                for key in opened.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    opened.get_tensor(key)
            library_ok = True
        except Exception:
            library_ok = False
        assert (safetensors_problem(path) is None) == library_ok, name


@pytest.mark.parametrize(
    ("devices", "ok"),
    [(1, True), (-1, True), ("auto", True), ([0, 1], True), ("0,1", True), ("2", True),
     (0, False), (-2, False), ([], False), ("zero", False), (True, False), ([0, -1], False)],
)  # fmt: skip
def test_trainer_devices(devices: object, ok: bool) -> None:
    if ok:
        check_trainer_devices(devices)
    else:
        with pytest.raises(ConfigError, match=r"trainer\.devices="):
            check_trainer_devices(devices)


@pytest.mark.parametrize("method", choices("method"))
def test_a_method_preset_agrees_with_its_own_groups_and_refuses_other_ones(method: str) -> None:
    groups = method_groups(method)
    assert groups, f"conf/method/{method}.yaml sets no group"
    check_method_preset({"method": method, **groups})
    group, option = next(iter(groups.items()))
    other = next(name for name in choices(group) if name != option)
    with pytest.raises(ConfigError) as error:
        check_method_preset({"method": method, **groups, group: other})
    assert f"method={method} sets" in str(error.value) and f"{group}={other} was chosen too" in str(error.value)


@pytest.mark.parametrize("group", ["strategy", "significance", "reorder", "model", "method", "sweep"])
def test_an_unknown_group_option_lists_the_registry(group: str) -> None:
    for arguments in ([f"{group}=rnak"], ["-m", f"{group}={choices(group)[0]},rnak"]):
        with pytest.raises(ConfigError) as error:
            check_command_line(arguments)
        assert str(error.value) == (
            f"{group}=rnak is not a {group} option: valid choices (conf/{group}/) are {', '.join(choices(group))}"
        )


def test_the_command_line_check_refuses_typos_and_unwritable_hydra_folders(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for arguments, message in [
        (["+stratgy=row"], "unknown key 'stratgy' (did you mean strategy?)"),
        (["stratgy=row"], "unknown key 'stratgy'"),
        (["kep=0.1"], "unknown key 'kep' (did you mean keep?)"),
        (
            ["model.devcie=cpu"],
            "model.devcie is not a key of model (did you mean model.device?): its keys are _target_,",
        ),
        (["-m", "keep=0.1,0.2", "significance.layr=3,4"], "significance.layr is not a key of significance (did you"),
        ([f"hydra.run.dir={tmp_path}/a-file/run"], "hydra.run.dir="),
        (["-m", f"hydra.sweep.dir={tmp_path}/a-file/${{now:%H}}"], "hydra.sweep.dir="),
    ]:
        with pytest.raises(ConfigError, match=None) as error:
            check_command_line(arguments)
        assert message in str(error.value)
    check_command_line(
        ["strategy=row", "keep=0.1,0.2", "-m", "+sweep=keep", "method=fopru", "model.device=cpu", "~logger",
         "hydra/launcher=slurm", f"hydra.run.dir={tmp_path}/new/${{now:%H}}", "--cfg", "job", "significance.layer=3"]
    )  # fmt: skip


def test_a_job_failing_after_ctrl_c_stops_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that turns the KeyboardInterrupt into its own error must not make the sweep go on."""
    from fopru import cli

    def wrapped_interrupt(cfg: object) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise RuntimeError("worker died") from None

    monkeypatch.setattr(cli, "run", wrapped_interrupt)
    monkeypatch.setattr(cli, "in_sweep", lambda: True)
    with pytest.raises(KeyboardInterrupt):
        cli.run_job(OmegaConf.create({}))

    def plain_failure(cfg: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run", plain_failure)
    failure = cli.run_job(OmegaConf.create({}))
    assert failure is not None and "RuntimeError: a bug" in str(failure)
