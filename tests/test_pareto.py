"""Pareto fronts, the results table, CSV, plots, collecting a sweep folder and the W&B sweep summary."""

import csv
import itertools
import json
import logging
import math
import struct
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fopru.eval.result import Latency, RunResult
from fopru.pareto import (
    collect,
    pareto_front,
    pivot_markdown,
    plot_pareto,
    results_table,
    shade_pruned,
    summarize_sweep,
    write_csv,
)


def make_result(**fields: object) -> RunResult:
    defaults: dict[str, object] = {
        "group": "test",
        "model": "tiny_llava",
        "data": "easyvqa",
        "strategy": "rank",
        "significance": "focal",
        "reorder": "original",
        "keep": 0.25,
        "keep_tokens": None,
        "samples": 16,
        "kept_tokens": 16.0,
        "metrics": {"accuracy": 0.5},
        "primary_metric": "accuracy",
        "tflops_prefill": 0.5,
        "tflops_total": 1.0,
        "latency": Latency(vision=0.01, pruning=0.002, prefill=0.02, decode_per_token=0.005, total=0.1),
        "peak_memory_bytes": 0,
        "kv_cache_bytes": 1024.0,
        "throughput": 4.0,
        "attention": "sdpa",
        "device": "cpu",
    }
    defaults.update(fields)
    return RunResult(**defaults)  # type: ignore[arg-type]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


# --- pareto_front, worked by hand ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 0.5)], [0]),
        # (3, .6) is dominated by (2, .7); the rest trade cost for accuracy; indices come back by cost.
        ([(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.4)], [3, 0, 1]),
        # Identical points: only the first one.
        ([(1.0, 0.5), (1.0, 0.5)], [0]),
        ([(2.0, 0.8), (1.0, 0.5), (1.0, 0.5), (2.0, 0.8)], [1, 0]),
        # Same cost: the more accurate one dominates. Same accuracy: the cheaper one dominates.
        ([(1.0, 0.4), (1.0, 0.6)], [1]),
        ([(2.0, 0.6), (1.0, 0.6)], [1]),
        # Dominated duplicates stay off the front.
        ([(1.0, 0.9), (2.0, 0.5), (2.0, 0.5)], [0]),
        # NaN is never on the front.
        ([(math.nan, 0.9), (1.0, math.nan), (2.0, 0.1)], [2]),
    ],
)
def test_pareto_front_by_hand(points: list[tuple[float, float]], front: list[int]) -> None:
    assert pareto_front(points) == front


values = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])  # few values, so ties and duplicates are common


@given(st.lists(st.tuples(values, values), max_size=12))
def test_pareto_front_matches_the_definition(points: list[tuple[float, float]]) -> None:
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] >= b[1] and a != b

    expected = {
        i
        for i, point in enumerate(points)
        if not any(dominates(other, point) for other in points) and point not in points[:i]
    }
    front = pareto_front(points)
    assert set(front) == expected
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


# --- table and CSV ------------------------------------------------------------------------------------------------


def sweep_results() -> list[RunResult]:
    """Two benchmarks; on easyvqa ``row`` beats ``rank`` at equal cost, on pope the latency front differs."""
    easy = [
        make_result(strategy="rank", keep=0.1, tflops_total=1.0, metrics={"accuracy": 0.50, "yes_no": 0.7}),
        make_result(strategy="rank", keep=0.5, tflops_total=3.0, metrics={"accuracy": 0.80, "yes_no": 0.9}),
        make_result(strategy="row", keep=0.1, tflops_total=1.0, metrics={"accuracy": 0.55, "yes_no": 0.6}),
        make_result(strategy="row", keep=0.5, tflops_total=3.0, metrics={"accuracy": 0.75, "yes_no": 0.8}),
    ]
    pope = [
        make_result(data="pope", metrics={"f1": 0.6}, primary_metric="f1", strategy="rank", tflops_total=1.0),
        make_result(data="pope", metrics={"f1": 0.7}, primary_metric="f1", strategy="row", tflops_total=2.0),
    ]
    assert pope[0].latency is not None
    pope[1] = replace(pope[1], latency=replace(pope[0].latency, total=0.05))
    return easy + pope


def test_results_table_columns_and_front_flags() -> None:
    rows = results_table(sweep_results())
    assert len(rows) == 6
    assert all(list(row) == list(rows[0]) for row in rows)  # one set of columns, in one order
    assert list(rows[0])[:14] == [
        "group",
        "model",
        "data",
        "strategy",
        "significance",
        "reorder",
        "llm_pruning",
        "method",
        "keep",
        "keep_tokens",
        "kept_tokens",
        "kept_tokens_layer_mean",
        "kept_tokens_equivalent",
        "samples",
    ]
    for column in [
        "easyvqa/accuracy",
        "easyvqa/yes_no",
        "pope/f1",
        "tflops_prefill",
        "tflops_total",
        "latency_total",
        "latency_vision",
        "latency_pruning",
        "latency_prefill",
        "latency_decode_per_token",
        "peak_memory_bytes",
        "kv_cache_bytes",
        "throughput",
        "pareto_tflops",
        "pareto_latency",
    ]:
        assert column in rows[0]
    assert rows[0]["easyvqa/accuracy"] == 0.5 and rows[0]["pope/f1"] is None
    assert rows[4]["pope/f1"] == 0.6 and rows[4]["easyvqa/accuracy"] is None
    # easyvqa: row@0.1 (1.0, .55) and rank@0.5 (3.0, .80); pope: both (cheaper rank, more accurate row).
    assert [row["pareto_tflops"] for row in rows] == [False, True, True, False, True, True]
    # Same latency on easyvqa, so only the most accurate; on pope row is also faster, so it dominates rank.
    assert [row["pareto_latency"] for row in rows] == [False, True, False, False, False, True]


def test_results_table_leaves_unmeasured_latency_blank() -> None:
    rows = results_table([make_result(latency=None), make_result(keep=0.5, tflops_total=2.0, metrics={"accuracy": 1})])
    assert rows[0]["latency_total"] is None and rows[0]["latency_decode_per_token"] is None
    assert rows[0]["pareto_latency"] is None
    assert rows[1]["pareto_latency"] is True
    assert [row["pareto_tflops"] for row in rows] == [True, True]


def test_csv_round_trip(tmp_path: Path) -> None:
    rows = results_table([*sweep_results(), make_result(latency=None, keep_tokens=64)])
    path = write_csv(rows, tmp_path / "results.csv")
    with path.open(newline="") as file:
        read = list(csv.DictReader(file))
    assert [list(row) for row in read] == [list(row) for row in rows]
    expected = [{key: "" if value is None else str(value) for key, value in row.items()} for row in rows]
    assert read == expected
    assert read[-1]["latency_total"] == "" and read[-1]["keep_tokens"] == "64"


# --- plots --------------------------------------------------------------------------------------------------------


def test_plot_pareto_writes_one_subplot_per_benchmark(tmp_path: Path) -> None:
    results = sweep_results()
    one = plot_pareto(results[:4], "tflops_total", tmp_path / "one.png")
    assert png_size(one) == (640 + 320, 480)  # a subplot and the legend beside it
    assert one.stat().st_size > 10_000  # axes, curves and labels, not an empty canvas
    two = plot_pareto(results, "latency", tmp_path / "two.png")
    assert png_size(two) == (1280 + 320, 480)


def test_plot_pareto_refuses_no_results(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results"):
        plot_pareto([], "tflops_total", tmp_path / "none.png")


# --- collect and summarize ----------------------------------------------------------------------------------------


def write_sweep(folder: Path, results: list[RunResult], job_numbers: list[int]) -> None:
    for number, result in zip(job_numbers, results, strict=True):
        (folder / str(number)).mkdir(parents=True)
        result.save(folder / str(number))


def test_collect_orders_by_job_number_and_skips_unreadable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    results = [make_result(keep=keep) for keep in (0.1, 0.2, 0.3, 0.4)]
    write_sweep(tmp_path, results, [10, 2, 0, 1])
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "result.json").write_text('{"group": "truncated')
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "result.json").write_text(json.dumps({"group": "missing fields"}))
    (tmp_path / "5").mkdir()  # a job that failed before writing anything
    with caplog.at_level(logging.WARNING, logger="fopru.pareto"):
        collected = collect(tmp_path)
    assert [result.keep for result in collected] == [0.3, 0.4, 0.2, 0.1]  # jobs 0, 1, 2, 10
    assert "3/result.json" in caplog.text and "4/result.json" in caplog.text


def test_summarize_sweep_writes_csv_plots_and_an_offline_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the summary run goes to the sweep folder anyway
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "sweep"
    results = sweep_results()
    write_sweep(sweep, results, list(range(len(results))))
    summary = summarize_sweep(sweep, group="my-sweep", log_to_wandb=True)
    assert summary.results == 6
    assert summary.csv == sweep / "results.csv"
    assert summary.tflops_plot == sweep / "pareto_tflops.png"
    assert summary.latency_plot == sweep / "pareto_latency.png"
    for path in (summary.csv, summary.tflops_plot, summary.latency_plot):
        assert path is not None and path.stat().st_size > 0
    assert summary.wandb_dir is not None and summary.wandb_dir.parent == sweep / "wandb"
    assert summary.wandb_dir.name.startswith("offline-run-")
    tables = list(summary.wandb_dir.glob("files/media/table/results_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == list(results_table(results)[0])
    assert len(table["data"]) == 6
    charts = {path.name for path in summary.wandb_dir.glob("files/media/table/pareto/*/*.table.json")}
    assert any(name.startswith("accuracy_vs_tflops_total") for name in charts)
    assert any(name.startswith("f1_vs_latency") for name in charts)
    assert len(list(summary.wandb_dir.glob("files/media/images/pareto/*.png"))) == 2
    # Group and job type live only in the run's binary log until `wandb sync`; W&B's writer process may still be
    # flushing it when finish() returns on a loaded machine.
    deadline = time.monotonic() + 30
    log = next(summary.wandb_dir.glob("run-*.wandb")).read_bytes()
    while b"sweep-summary" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = next(summary.wandb_dir.glob("run-*.wandb")).read_bytes()
    assert b"my-sweep" in log and b"sweep-summary" in log


def test_summarize_sweep_without_latency_or_results(tmp_path: Path) -> None:
    write_sweep(tmp_path / "partial", [make_result(), make_result(keep=0.5, latency=None)], [0, 1])
    summary = summarize_sweep(tmp_path / "partial", group="g", log_to_wandb=False)
    assert summary.results == 2 and summary.tflops_plot is not None
    assert summary.latency_plot is None and not (tmp_path / "partial" / "pareto_latency.png").exists()
    assert summary.wandb_dir is None

    (tmp_path / "failed" / "0").mkdir(parents=True)
    empty = summarize_sweep(tmp_path / "failed", group="g", log_to_wandb=True)
    assert empty.results == 0 and empty.csv is None
    assert sorted(path.name for path in (tmp_path / "failed").iterdir()) == ["0"]


def test_curves_label_only_the_fields_that_vary(tmp_path: Path) -> None:
    from fopru.pareto import curves

    results = [
        make_result(significance=significance, keep=keep, tflops_total=keep)
        for significance, keep in itertools.product(["focal", "cls"], [0.1, 0.5])
    ]
    assert list(curves(results, "tflops_total")) == ["significance=cls rank", "significance=focal rank"]
    assert list(curves(results[:2], "tflops_total")) == ["rank"]


# --- kept patches ----------------------------------------------------------------------------------------------------


def test_shade_pruned_darkens_exactly_the_pruned_patches() -> None:
    import numpy as np

    image = np.full((4, 6, 3), 200, dtype=np.uint8)  # a 2 x 3 grid of 2 x 2 patches
    shaded = shade_pruned(image, (2, 3), kept=[1, 5])
    kept = np.zeros((4, 6), dtype=bool)
    kept[0:2, 2:4] = True  # patch 1: row 0, column 1
    kept[2:4, 4:6] = True  # patch 5: row 1, column 2
    assert (shaded[kept] == 200).all()
    assert (shaded[~kept] == 50).all()


def test_summarize_sweep_draws_the_kept_patches_of_every_job(tmp_path: Path) -> None:
    from PIL import Image

    sweep = tmp_path / "sweep"
    results = [make_result(strategy=name, keep=0.25) for name in ("rank", "row", "random")]
    write_sweep(sweep, results, [0, 1, 2])
    for job in range(3):
        folder = sweep / str(job)
        (folder / "kept_patches").mkdir()
        records = []
        for sample in range(2):
            Image.new("RGB", (8, 8), "white").save(folder / "kept_patches" / f"{sample}.png")
            records.append(
                {
                    "sample_id": f"s{sample}",
                    "question": "q",
                    "grid": [2, 2],
                    "kept": [job],
                    "image": f"kept_patches/{sample}.png",
                }
            )
        (folder / "kept_patches.json").write_text(json.dumps(records))
    summary = summarize_sweep(sweep, group="g", log_to_wandb=False)
    assert summary.kept_plot == sweep / "kept_patches.png"
    width, height = png_size(sweep / "kept_patches.png")
    assert width > height  # three job columns, two sample rows
    assert summarize_sweep(tmp_path / "none", group="g", log_to_wandb=False).kept_plot is None


def test_pivot_markdown_by_hand() -> None:
    results = [
        make_result(strategy="rank", keep=0.1, metrics={"accuracy": 0.9}),
        make_result(strategy="rank", keep=0.5, metrics={"accuracy": 0.95}),
        make_result(strategy="row", keep=0.1, metrics={"accuracy": 0.8125}),
    ]
    assert pivot_markdown(results, "strategy", "keep") == (
        "| strategy \\ keep | 0.1 | 0.5 |\n|---|---|---|\n| rank | 90.0 | 95.0 |\n| row | 81.2 |  |"
    )


def test_jobs_in_named_folders_are_collected_by_number(tmp_path: Path) -> None:
    for number in (10, 2, 0):
        folder = tmp_path / f"{number}-keep={number / 10}"
        folder.mkdir()
        make_result(keep=number / 10 or 1.0).save(folder)
    assert [result.keep for result in collect(tmp_path)] == [1.0, 0.2, 1.0]


def test_kept_patches_of_many_jobs_go_on_pages_titled_by_what_varies(tmp_path: Path) -> None:
    from PIL import Image

    from fopru.pareto.plots import job_title, plot_kept_pages

    sweep = tmp_path / "sweep"
    reorders = ("original", "significance")
    results = [
        make_result(strategy="rank", reorder=reorders[job % 2], keep=0.25, overrides=[f"reorder={reorders[job % 2]}",
                    f"seed={job}"])
        for job in range(10)
    ]  # fmt: skip
    write_sweep(sweep, results, list(range(10)))
    for job in range(10):
        folder = sweep / str(job)
        (folder / "kept_patches").mkdir()
        Image.new("RGB", (8, 8), "white").save(folder / "kept_patches" / "0.png")
        record = {"sample_id": "s0", "question": "q", "grid": [2, 2], "kept": [0], "image": "kept_patches/0.png"}
        (folder / "kept_patches.json").write_text(json.dumps([record]))
    pages = plot_kept_pages(sweep, sweep / "kept.png", max_jobs=4)
    assert pages == [sweep / "kept.png", sweep / "kept_2.png", sweep / "kept_3.png"]  # 4 + 4 + 2 jobs, none dropped
    assert png_size(pages[0])[0] > png_size(pages[2])[0]
    # Jobs that differ only in reorder (and seed) get titles that say so.
    assert job_title(sweep / "1", results[1], "reorder=significance seed=1") == "#1\nreorder=significance\nseed=1"
    summary = summarize_sweep(sweep, group="g", log_to_wandb=False)
    assert summary.kept_pages == (sweep / "kept_patches.png", sweep / "kept_patches_2.png")
