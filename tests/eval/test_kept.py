"""The kept patches saved beside a job's result: the image the encoder sees and the indices on its grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from fopru.components import CONFIG_DIR, load
from fopru.data.easyvqa import EasyVQABenchmark
from fopru.eval.kept import record_kept_patches
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline


def pipeline(*overrides: str) -> PruningPipeline:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return PruningPipeline.from_config(compose(config_name="train_eval", overrides=list(overrides)))


def test_row_strategy_keeps_whole_rows_on_the_image_the_encoder_sees(tmp_path: Path) -> None:
    target = load("model", "tiny_llava", TargetModel)
    benchmark = EasyVQABenchmark(limit=2, seed=0)
    path = record_kept_patches(target, pipeline("strategy=row", "keep=0.5"), benchmark, tmp_path, samples=2)
    assert path == tmp_path / "kept_patches.json"
    records = json.loads(path.read_text())
    dataset = benchmark.load()
    assert [record["sample_id"] for record in records] == list(dataset["sample_id"])
    for record, original in zip(records, dataset["image"], strict=True):
        assert record["grid"] == [6, 6]
        rows = {index // 6 for index in record["kept"]}
        assert len(rows) == 3 and sorted(record["kept"]) == sorted(row * 6 + col for row in rows for col in range(6))
        # The saved image is the processor's input de-normalized: the 64 x 64 picture resized to 48 x 48.
        saved = np.asarray(Image.open(tmp_path / record["image"]), dtype=np.int16)
        resized = np.asarray(original.convert("RGB").resize((48, 48), Image.Resampling.BICUBIC), dtype=np.int16)
        assert saved.shape == (48, 48, 3)
        assert np.abs(saved - resized).mean() < 3


def test_families_without_one_grid_save_nothing(tmp_path: Path) -> None:
    target = load("model", "tiny_llava_next", TargetModel)
    benchmark = EasyVQABenchmark(limit=1, seed=0)
    assert record_kept_patches(target, pipeline(), benchmark, tmp_path, samples=1) is None
    assert not (tmp_path / "kept_patches.json").exists()
