"""The scoring protocol travels with every result: its own results folder, ``result.json`` and ``results.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

from hydra import compose, initialize_config_dir

from fopru.components import CONFIG_DIR, choices
from fopru.data.metrics import LMMS_EVAL_REVISION
from fopru.data.scoring import SCORING_PROTOCOLS, scoring_protocol
from fopru.eval.evaluate import results_folder
from fopru.eval.result import Latency, RunResult
from fopru.pareto import results_table, write_csv


def folder(*overrides: str) -> Path:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return results_folder(compose(config_name="train_eval", overrides=list(overrides)))


def test_two_protocols_never_share_a_results_folder() -> None:
    for data in choices("data"):
        folders = {folder(f"data={data}", f"data.scoring={name}") for name in SCORING_PROTOCOLS}
        assert len(folders) == len(SCORING_PROTOCOLS), data
        # The default is lmms_eval, so naming it changes nothing; a larger limit still reuses a folder.
        assert folder(f"data={data}") == folder(f"data={data}", "data.scoring=lmms_eval")
        assert folder(f"data={data}", "data.limit=5") == folder(f"data={data}", "data.limit=50")


def result(scoring: str) -> RunResult:
    return RunResult(
        group="test",
        model="tiny_llava",
        data="pope",
        strategy="rank",
        significance="focal",
        reorder="original",
        keep=0.25,
        keep_tokens=None,
        samples=6,
        kept_tokens=16.0,
        metrics={"f1": 0.5},
        primary_metric="f1",
        tflops_prefill=0.5,
        tflops_total=1.0,
        latency=Latency(vision=0.01, pruning=0.002, prefill=0.02, decode_per_token=0.005, total=0.1),
        peak_memory_bytes=0,
        kv_cache_bytes=1024.0,
        throughput=4.0,
        attention="sdpa",
        device="cpu",
        scoring=scoring,
    )


def test_result_json_and_results_csv_record_the_protocol_and_its_revision(tmp_path: Path) -> None:
    label = scoring_protocol("lmms_eval").label
    assert label == f"lmms_eval@{LMMS_EVAL_REVISION}" and len(LMMS_EVAL_REVISION) == 40
    assert scoring_protocol("lenient").label == "lenient"
    saved = result(label).save(tmp_path)
    assert RunResult.load(saved).scoring == label
    rows = results_table([result(label), result("lenient")])
    with write_csv(rows, tmp_path / "results.csv").open() as file:
        assert [row["scoring"] for row in csv.DictReader(file)] == [label, "lenient"]


def test_a_result_json_written_before_the_protocol_was_recorded_reads_as_lenient(tmp_path: Path) -> None:
    path = result("lmms_eval").save(tmp_path)
    path.write_text(path.read_text().replace('"scoring": "lmms_eval",', ""))
    assert "scoring" not in path.read_text()
    assert RunResult.load(path).scoring == "lenient"
