"""The benchmark as a Lightning data module: every sample exactly once, whatever the number of processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Sampler

from fopru.data.base import Benchmark


class ShardSampler(Sampler[int]):
    """Positions ``rank, rank + world, ...`` of ``range(size)``: disjoint shards that cover every sample once.

    Unlike ``DistributedSampler`` it never pads a shard with repeated samples, so no prediction is counted twice;
    shards differ in length by at most one.
    """

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.positions = list(range(rank, size, world))

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


class BenchmarkDataModule(L.LightningDataModule):
    """Serves a benchmark's samples that have no prediction yet, sharded across processes."""

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
        self.dataset = dataset.select(remaining)

    def predict_dataloader(self) -> DataLoader[dict[str, Any]]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=ShardSampler(len(self.dataset), rank, world),
            collate_fn=collate,
        )
