"""The patches a pruning method keeps on a few samples, saved beside a job's result for figures."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from fopru.data.base import Benchmark
from fopru.eval.data import collate
from fopru.eval.result import KEPT_FILE
from fopru.models.base import TargetModel
from fopru.pipeline import PruningPipeline
from fopru.seeding import sample_key

KEPT_IMAGES = "kept_patches"


def record_kept_patches(
    target: TargetModel, pipeline: PruningPipeline, benchmark: Benchmark, folder: Path, samples: int
) -> Path | None:
    """Prune the benchmark's first ``samples`` samples and save, per sample, the image the encoder sees (PNG) and
    the kept patch indices on its grid (``kept_patches.json``). ``None`` when the model has no single patch grid.

    The first samples of a benchmark are the same in every job of a sweep, so the figures line up across methods.
    """
    if samples <= 0:
        return None
    dataset = benchmark.load()
    records = []
    for position in range(min(samples, len(dataset))):
        batch = collate([dataset[position]])
        keys = [sample_key(batch["rows"][0]["sample_id"])]  # the draws its prediction had
        inputs = target.prepare(batch["images"], [target.format_prompt(batch["prompts"][0])], keys)
        view = target.patch_view(inputs, 0)
        if view is None:
            return None
        pixels, (rows, cols) = view
        with torch.no_grad():
            language = target.prefill_inputs(inputs, pipeline)
        indices = torch.cat([image.indices for image in language.images]).tolist()
        (folder / KEPT_IMAGES).mkdir(parents=True, exist_ok=True)
        image_path = Path(KEPT_IMAGES) / f"{position}.png"
        Image.fromarray(pixels.numpy()).save(folder / image_path)
        row = batch["rows"][0]
        records.append(
            {
                "sample_id": str(row["sample_id"]),
                "question": str(row.get("question", row["prompt"])),
                "grid": [rows, cols],
                "kept": sorted(int(index) for index in indices),
                "image": str(image_path),
            }
        )
    path = folder / KEPT_FILE
    path.write_text(json.dumps(records, indent=1))
    return path
