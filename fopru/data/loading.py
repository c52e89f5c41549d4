"""Finding a benchmark's split (a local folder, the local Hugging Face cache, or the hub), sampling ``limit`` of
it, and laying the contract columns beside its images.

Loading is cheap in the number of samples it does not keep: images are never decoded, ``limit`` draws its sample
before any per-row work, and columns are added next to the image column instead of rewriting it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import huggingface_hub
from datasets import Dataset, Image, concatenate_datasets, load_dataset, load_from_disk

from fopru.errors import ConfigError
from fopru.hub import hub_reachable

RGB_IMAGE = Image(mode="RGB")  # lmms-eval's doc_to_visual calls .convert("RGB") on every image

# ---------------------------------------------------------------------------------------------------------------------
# Finding a split: a local folder, the local Hugging Face cache, or the hub
# ---------------------------------------------------------------------------------------------------------------------


def load_split(dataset: str, config: str | None, split: str) -> Dataset:
    """One split of a dataset: from a local folder if ``dataset`` is one, else from the hub (or its local cache).

    A hub dataset that is not cached fails within seconds with a :class:`ConfigError` naming it when the hub cannot
    be used (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` set, or the hub unreachable), instead of retrying for minutes.
    """
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        return _load_local(folder, config, split, dataset)
    return _load_hub(dataset, config, split)


def _load_local(folder: Path, config: str | None, split: str, dataset: str) -> Dataset:
    if config is not None and (folder / config).is_dir():
        return _load_local(folder / config, None, split, dataset)
    if (folder / "state.json").is_file():  # Dataset.save_to_disk: the folder is the split
        loaded = load_from_disk(str(folder))
        assert isinstance(loaded, Dataset)
        return loaded
    if (folder / "dataset_dict.json").is_file():
        splits = load_from_disk(str(folder))
        if split not in splits:
            raise ConfigError(f"split {split!r} is not in the local dataset {dataset!r}; it has {', '.join(splits)}")
        return splits[split]
    patterns = (f"{split}-*.parquet", f"{split}.parquet", f"data/{split}-*.parquet", f"data/{split}.parquet")
    files = sorted(str(path) for pattern in patterns for path in folder.glob(pattern))
    if not files:
        raise ConfigError(
            f"the local dataset {dataset!r} (config {config!r}) has no split {split!r}: expected a save_to_disk "
            f"folder, a folder per config, or {split}-*.parquet files in {folder} or {folder / 'data'}"
        )
    loaded = load_dataset("parquet", data_files={split: files}, split=split)
    assert isinstance(loaded, Dataset)
    return loaded


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Offline mode for ``datasets`` and ``huggingface_hub`` within the block: cache only, no retries."""
    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_hub(dataset: str, config: str | None, split: str) -> Dataset:
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline and hub_reachable():
        loaded = load_dataset(dataset, config, split=split)
    else:
        # Without the hub, only the local cache can answer; asking datasets online would retry for minutes.
        reason = (
            "offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)"
            if offline
            else f"{huggingface_hub.constants.ENDPOINT} could not be reached"
        )
        try:
            with _hub_offline():
                loaded = load_dataset(dataset, config, split=split)
        except (ConnectionError, FileNotFoundError, ValueError) as error:
            config_arg = f", {config!r}" if config is not None else ""
            raise ConfigError(
                f"dataset {dataset!r} (config {config!r}, split {split!r}) could not be loaded: it is not in the "
                f"local Hugging Face datasets cache and {reason}. On a machine with internet run "
                f'`python -c "import datasets; datasets.load_dataset({dataset!r}{config_arg}, split={split!r})"` '
                "and copy ~/.cache/huggingface, or point the benchmark's `dataset` at a local folder "
                f"(Dataset.save_to_disk, or a snapshot with {split}-*.parquet files). ({error})"
            ) from error
    assert isinstance(loaded, Dataset)
    return loaded


# ---------------------------------------------------------------------------------------------------------------------
# Sampling and assembling the contract columns
# ---------------------------------------------------------------------------------------------------------------------


def sample_positions(groups: Sequence[Hashable], limit: int | None, seed: int, where: str) -> list[int]:
    """Positions into ``groups`` of a seeded random choice of ``limit`` distinct groups (all if None), in order.

    Rows sharing a group key are kept or dropped together (MME's two questions per image, MMBench's circular
    variants). The same groups, ``limit`` and ``seed`` always give the same positions.
    """
    if limit is None:
        return list(range(len(groups)))
    distinct = list(dict.fromkeys(groups))
    if limit > len(distinct):
        raise ConfigError(f"{where}: limit={limit} is more than the {len(distinct)} samples it has")
    chosen = set(random.Random(seed).sample(distinct, limit))
    return [position for position, group in enumerate(groups) if group in chosen]


def assemble(records: Sequence[dict[str, Any]], images: Dataset, image_rows: Sequence[int], where: str) -> Dataset:
    """The benchmark dataset: ``records[i]`` (sample_id, prompt, scoring fields) beside image ``images[image_rows[i]]``.

    When every sample has its own image row, the new columns are laid next to the image column (padded with None
    elsewhere) and the samples selected afterwards, so no image is copied; shared images (GQA) are copied per row.
    """
    if not records:
        raise ConfigError(f"{where}: no samples")
    duplicates = [sample for sample, count in Counter(r["sample_id"] for r in records).items() if count > 1]
    if duplicates:
        raise ConfigError(f"{where}: sample ids must be unique, but {duplicates[:5]} repeat")
    if "image" not in images.column_names:
        raise ConfigError(f"{where}: the dataset has no 'image' column; it has {', '.join(images.column_names)}")
    source = images.select_columns(["image"]).cast_column("image", RGB_IMAGE)
    names = list(records[0])
    if len(set(image_rows)) == len(image_rows):
        padded: dict[str, list[Any]] = {name: [None] * len(source) for name in names}
        for row, record in zip(image_rows, records, strict=True):
            for name in names:
                padded[name][row] = record[name]
        combined = concatenate_datasets([source, Dataset.from_dict(padded)], axis=1).select(image_rows)
    else:
        combined = concatenate_datasets([source.select(image_rows), Dataset.from_list(list(records))], axis=1)
    rest = [name for name in names if name not in ("sample_id", "prompt")]
    return combined.select_columns(["sample_id", "image", "prompt", *rest])


def require_columns(dataset: Dataset, columns: Sequence[str], where: str) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"{where}: the dataset lacks column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}"
        )
