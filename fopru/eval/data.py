"""The benchmark as a Lightning data module: every sample exactly once, whatever the number of processes, the
questions of one image side by side."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import lightning as L
from torch.utils.data import DataLoader, Sampler

from fopru.data.base import Benchmark

#: Rows whose encoded images are read at a time when the samples are grouped by image.
_IMAGE_CHUNK = 1024


class ShardSampler(Sampler[int]):
    """The ``rank``-th of ``world`` contiguous blocks of ``range(size)``: disjoint shards that cover every sample once.

    Unlike ``DistributedSampler`` it never pads a shard with repeated samples, so no prediction is counted twice;
    shards differ in length by at most one. Contiguous, so that the questions of one image (adjacent, see
    :func:`image_order`) stay in one process, where they share their encoding and prompt prefix.
    """

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.positions = list(range(rank * size // world, (rank + 1) * size // world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


def collate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A batch: the PIL images, the benchmark prompts and every other field of the rows."""
    return {
        "images": [row["image"] for row in rows],
        "prompts": [row["prompt"] for row in rows],
        "rows": [{key: value for key, value in row.items() if key != "image"} for row in rows],
    }


def image_keys(dataset: datasets.Dataset) -> list[str]:
    """What identifies each row's image without decoding it: a digest of its encoded bytes (``blake2b``), or its
    file path where the dataset stores only the path."""
    encoded = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    keys = []
    for start in range(0, len(encoded), _IMAGE_CHUNK):
        for image in encoded[start : start + _IMAGE_CHUNK]["image"]:
            content = image.get("bytes") if isinstance(image, dict) else None
            if content:
                keys.append("bytes:" + hashlib.blake2b(content, digest_size=16).hexdigest())
            else:
                keys.append(f"path:{image.get('path') if isinstance(image, dict) else image}")
    return keys


def image_order(keys: Sequence[str]) -> list[int]:
    """Row positions with the rows of one image side by side: images in the order of their first row, and each
    image's rows in their own order (a stable sort by first appearance)."""
    first: dict[str, int] = {}
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    return sorted(range(len(keys)), key=lambda position: first[keys[position]])


class BenchmarkDataModule(L.LightningDataModule):
    """Serves a benchmark's samples that have no prediction yet, sharded across processes, the questions of one
    image adjacent (:func:`image_order`) so that a batch holds whole images: they are encoded once and share their
    prompt prefix. Predictions are per sample id, so the order changes no result."""

    def __init__(self, benchmark: Benchmark, batch_size: int, skip: set[str]) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.skip = skip
        self.dataset: Any = None
        self.sample_ids: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        dataset = self.benchmark.load()
        self.sample_ids = [str(sample) for sample in dataset["sample_id"]]
        remaining = [index for index, sample in enumerate(self.sample_ids) if sample not in self.skip]
        selected = dataset.select(remaining)
        self.dataset = selected.select(image_order(image_keys(selected))) if len(selected) else selected

    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=ShardSampler(len(self.dataset), rank, world),
            collate_fn=collate,
        )
