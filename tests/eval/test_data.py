"""The evaluation data module: every sample once, the questions of one image side by side."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from PIL import Image

from fopru.data.easyvqa import EasyVQABenchmark
from fopru.eval.data import BenchmarkDataModule, ShardSampler, image_keys, image_order


def test_image_order_by_hand() -> None:
    # a b a c b -> a's rows (0, 2), then b's (1, 4), then c's (3): each image at its first row, rows in their order.
    assert image_order(["a", "b", "a", "c", "b"]) == [0, 2, 1, 4, 3]
    assert image_order([]) == []
    assert image_order(["x", "y", "z"]) == [0, 1, 2]  # nothing repeats: the order is kept


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def embedded_dataset(seeds: Sequence[int]) -> datasets.Dataset:
    """Images stored as bytes (as hub datasets store them), one row per seed: equal seeds are the same image."""
    return datasets.Dataset.from_dict(
        {
            "sample_id": [f"s{row}" for row in range(len(seeds))],
            "prompt": [f"question {row}" for row in range(len(seeds))],
            "image": [{"bytes": png(seed), "path": None} for seed in seeds],
        },
        features=datasets.Features(
            {"sample_id": datasets.Value("string"), "prompt": datasets.Value("string"), "image": datasets.Image()}
        ),
    )


def test_image_keys_read_the_encoded_bytes_or_the_path() -> None:
    keys = image_keys(embedded_dataset([3, 4, 3]))
    assert keys[0] == keys[2] != keys[1]
    assert all(key.startswith("bytes:") for key in keys)
    on_disk = EasyVQABenchmark(limit=30, seed=0).load()
    stored = on_disk.cast_column("image", datasets.Image(decode=False))["image"]
    assert image_keys(on_disk) == [f"path:{image['path']}" for image in stored]  # easy-VQA's PNG files


class Fixed:
    """A benchmark stand-in serving a given dataset."""

    def __init__(self, dataset: datasets.Dataset) -> None:
        self.dataset = dataset

    def load(self) -> datasets.Dataset:
        return self.dataset


def served(module: BenchmarkDataModule, world: int = 1) -> list[list[str]]:
    """The sample ids each of ``world`` ranks is served, in order."""
    module.setup()
    return [[module.dataset[index]["sample_id"] for index in ShardSampler(len(module.dataset), rank, world)]
            for rank in range(world)]  # fmt: skip


def test_the_data_module_serves_each_image_s_questions_side_by_side() -> None:
    seeds = [1, 2, 1, 3, 2, 1, 4]
    module = BenchmarkDataModule(Fixed(embedded_dataset(seeds)), batch_size=3, skip={"s3"})  # type: ignore[arg-type]
    (order,) = served(module)
    # s3 (image 3) is already predicted; image 1's rows s0 s2 s5, then image 2's s1 s4, then image 4's s6.
    assert order == ["s0", "s2", "s5", "s1", "s4", "s6"]
    batches = [
        [row["sample_id"] for row in batch["rows"]] for batch in module.predict_dataloader()
    ]  # the loader serves the same order
    assert batches == [["s0", "s2", "s5"], ["s1", "s4", "s6"]]


def test_ranks_split_the_ordered_samples_without_overlap() -> None:
    seeds = [5, 6, 5, 7, 6, 5, 8, 9, 7]
    dataset = embedded_dataset(seeds)
    for world in (1, 2, 3, 4):
        shards = served(BenchmarkDataModule(Fixed(dataset), batch_size=2, skip=set()), world)  # type: ignore[arg-type]
        flat = [sample for shard in shards for sample in shard]
        assert sorted(flat) == sorted(dataset["sample_id"]) and len(flat) == len(set(flat))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_limit_selects_the_same_samples_as_before() -> None:
    benchmark = EasyVQABenchmark(limit=200, seed=0)
    loaded: Any = benchmark.load()
    (order,) = served(BenchmarkDataModule(benchmark, batch_size=8, skip=set()))
    assert sorted(order) == sorted(loaded["sample_id"])
    images = [loaded[loaded["sample_id"].index(sample)]["image_id"] for sample in order]
    # Whole images: once an image's questions end, it never comes back.
    finished: set[int] = set()
    for previous, image in zip([None, *images], images, strict=False):
        if previous is not None and image != previous:
            finished.add(previous)
        assert image not in finished
