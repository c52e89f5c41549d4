"""The benchmarks: where each dataset lives, how its rows become prompts, and which official metric scores them.

Every hub benchmark reads the lmms-lab copy that lmms-eval evaluates on (same dataset id, config and split) and
builds the prompt of lmms-eval's ``default`` (LLaVA) ``doc_to_text`` for that task, so that numbers can be set beside
lmms-eval's. The dataset can also be a local folder (a ``Dataset.save_to_disk`` folder, a ``DatasetDict`` one, a
folder per config, or a folder of ``<split>-*.parquet`` files such as a hub snapshot); tests load their fixtures
through the same code.

Loading is cheap in the number of samples it does not keep: images are never decoded, ``limit`` draws its sample
before any per-row work, and columns are added next to the image column instead of rewriting it.
"""

from __future__ import annotations

import math
import random
import string
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import datasets
import easy_vqa
import huggingface_hub
from datasets import Dataset, Features, Image, concatenate_datasets, load_dataset, load_from_disk

from fopru.data.base import Benchmark
from fopru.data.metrics import (
    ai2d_correct,
    exact_match,
    llava_pope_metrics,
    llava_scienceqa_letter,
    lmms_eval_exact_match,
    lmms_eval_pope_metrics,
    lmms_eval_vqa_accuracy,
    mmbench_circular_accuracy,
    mmbench_scores,
    mme_scores,
    multiple_choice_accuracy,
    pope_metrics,
    scienceqa_correct,
    seedbench_correct,
    vqa_accuracy,
)
from fopru.data.scoring import DEFAULT_SCORING, GenerationSettings
from fopru.errors import ConfigError
from fopru.models.loading import hub_reachable

# lmms-eval's default post-prompts (the ones its LLaVA runs use).
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."
RGB_IMAGE = Image(mode="RGB")  # lmms-eval's doc_to_visual calls .convert("RGB") on every image
# lmms-eval's model wrappers generate up to 1024 new tokens when a task yaml sets no max_new_tokens.
LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS = 1024
# The ``until`` of the yaml files that set one (TextVQA, SEED-Bench, MMBench).
ASSISTANT_TURN = ("ASSISTANT:",)


# LLaVA's model_vqa_loader.py (POPE, TextVQA, SEED-Bench) and model_vqa_science.py (ScienceQA) generate up to
# 128 and 1024 new tokens.
LLAVA_LOADER = GenerationSettings(128)
LLAVA_SCIENCE = GenerationSettings(1024)


def generation(
    lmms_eval: GenerationSettings, lenient_max_new_tokens: int, llava: GenerationSettings | None = None
) -> dict[str, GenerationSettings]:
    """A benchmark's generation settings per protocol: lmms-eval's task yaml, the lenient protocol's own and, where
    the LLaVA repository scores the benchmark, its evaluation script's."""
    settings = {"lmms_eval": lmms_eval, "lenient": GenerationSettings(lenient_max_new_tokens)}
    if llava is not None:
        settings["llava"] = llava
    return settings


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


def _require_columns(dataset: Dataset, columns: Sequence[str], where: str) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"{where}: the dataset lacks column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}"
        )


def _mean(values: Sequence[float], where: str) -> float:
    if not values:
        raise ConfigError(f"{where}: no records to score")
    return sum(values) / len(values)


def _lettered(choices: Sequence[str]) -> str:
    """ "A. first\\nB. second", the option list of lmms-eval's multiple-choice prompts."""
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices, strict=False))


def _letter(index: int | str, choices: Sequence[str], where: str) -> str:
    position = int(index)
    if not 0 <= position < len(choices):
        raise ConfigError(f"{where}: answer index {index!r} is outside the {len(choices)} options")
    return string.ascii_uppercase[position]


# ---------------------------------------------------------------------------------------------------------------------
# easy-VQA: the embedded default, shipped inside the easy-vqa package
# ---------------------------------------------------------------------------------------------------------------------


class EasyVQABenchmark(Benchmark):
    """easy-VQA (pip ``easy-vqa``): 64 x 64 images of one coloured shape, 13 one-word answers, exact match.

    ``sample_id`` is ``<split>-<question number>``. Images are opened from the package's PNG files when accessed.
    """

    GENERATION = generation(GenerationSettings(16), 16)
    UNSUPPORTED_REASON = "easy-VQA is not among LLaVA's evaluation benchmarks"
    SPLITS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "train": (easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
        "test": (easy_vqa.get_test_questions, easy_vqa.get_test_image_paths),
    }

    def __init__(
        self, split: str = "test", limit: int | None = None, seed: int = 0, scoring: str = DEFAULT_SCORING
    ) -> None:
        super().__init__(limit, seed, scoring)
        if split not in self.SPLITS:
            raise ConfigError(f"easy-VQA split={split!r} is not one of {', '.join(self.SPLITS)}")
        self.split = split

    def load(self) -> Dataset:
        where = f"easy-VQA {self.split}"
        get_questions, get_image_paths = self.SPLITS[self.split]
        questions, answers, image_ids = get_questions()
        paths: dict[int, str] = get_image_paths()
        positions = sample_positions(range(len(questions)), self.limit, self.seed, where)
        missing = sorted({image_ids[i] for i in positions} - set(paths))
        if missing:
            raise ConfigError(f"{where}: no image file for image ids {missing[:5]}")
        records = [
            {
                "sample_id": f"{self.split}-{i}",
                "prompt": f"{questions[i]}{SHORT_ANSWER}",
                "question": questions[i],
                "answer": answers[i],
                "image_id": image_ids[i],
            }
            for i in positions
        ]
        images = Dataset.from_dict(
            {"image": [paths[image_ids[i]] for i in positions]}, features=Features({"image": Image()})
        )
        return assemble(records, images, range(len(records)), where)

    def train_split(self) -> EasyVQABenchmark:
        return EasyVQABenchmark("train", self.limit, self.seed, self.scoring)

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """lmms-eval's ``exact_match`` (case and punctuation aside), as its GQA task scores one-word answers."""
        return {"accuracy": _mean([lmms_eval_exact_match(r["prediction"], r["answer"]) for r in records], "easy-VQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Exact-match accuracy (case, punctuation and surrounding spaces aside)."""
        return {"accuracy": _mean([exact_match(r["prediction"], r["answer"]) for r in records], "easy-VQA")}


# ---------------------------------------------------------------------------------------------------------------------
# Hub benchmarks (lmms-lab datasets, as lmms-eval evaluates them)
# ---------------------------------------------------------------------------------------------------------------------


class HubBenchmark(Benchmark):
    """Shared loading of a benchmark kept in a hub dataset (or a local copy of one).

    ``load`` reads the split, keeps the rows that belong to the benchmark (:meth:`candidates`), draws ``limit``
    groups of rows (:meth:`groups`), turns each kept row's ``columns`` into a record (:meth:`record`: sample_id,
    prompt and scoring fields) and lays the records beside the rows' images (:meth:`images`).

    ``dataset`` is a hub id (``lmms-lab/POPE``) or a local folder holding the same split(s).
    """

    columns: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        dataset: str,
        split: str,
        config: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        scoring: str = DEFAULT_SCORING,
    ) -> None:
        super().__init__(limit, seed, scoring)
        self.dataset = dataset
        self.config = config
        self.split = split

    @property
    def where(self) -> str:
        return f"{type(self).__name__}(dataset={self.dataset!r}, config={self.config!r}, split={self.split!r})"

    def load(self) -> Dataset:
        raw = load_split(self.dataset, self.config, self.split)
        _require_columns(raw, self.columns, self.where)
        candidates = self.candidates(raw)
        groups = self.groups(raw, candidates)
        chosen = [candidates[i] for i in sample_positions(groups, self.limit, self.seed, self.where)]
        rows = raw.select_columns(list(self.columns))
        if len(chosen) != len(raw):
            rows = rows.select(chosen)
        records = [self.record(row, position) for row, position in zip(rows.to_list(), chosen, strict=True)]
        images, image_rows = self.images(raw, chosen, records)
        return assemble(records, images, image_rows, self.where)

    def candidates(self, raw: Dataset) -> list[int]:
        """Positions of the rows that belong to the benchmark (all, unless a benchmark filters)."""
        return list(range(len(raw)))

    def groups(self, raw: Dataset, positions: list[int]) -> Sequence[Hashable]:
        """One key per candidate row; ``limit`` keeps or drops rows with equal keys together."""
        return positions

    def images(
        self, raw: Dataset, positions: list[int], records: Sequence[dict[str, Any]]
    ) -> tuple[Dataset, Sequence[int]]:
        """A dataset with an ``image`` column and, per kept row (``positions``, ``records``), its image's row there."""
        return raw, positions

    @abstractmethod
    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        """The sample of one source row (its ``columns``; ``position`` is its row number in the split)."""


class PopeBenchmark(HubBenchmark):
    """POPE (lmms-lab/POPE, test: 3 x 3,000 yes/no object questions, splits adversarial, popular, random).

    lmms-eval ``pope``: prompt ``question.strip() + "\\nAnswer the question using a single word or phrase."``,
    up to 128 new tokens. ``lmms_eval``: :func:`~fopru.data.metrics.lmms_eval_pope_metrics` over all questions
    pooled (the headline ``accuracy``, ``precision``, ``recall``, ``f1``, both yes-ratios and ``unreadable``, as
    lmms-eval's ``pope`` task reports them) and the same per ``category`` (``adversarial/f1``, ...). ``lenient``:
    per category with :func:`~fopru.data.metrics.pope_metrics`, ``accuracy`` and ``f1`` their unweighted means.
    ``llava``: per category with :func:`~fopru.data.metrics.llava_pope_metrics` (``llava/eval/eval_pope.py``, which
    prints each split), ``accuracy`` and ``f1`` their unweighted means (the single POPE number of LLaVA-1.5 papers).
    """

    GENERATION = generation(GenerationSettings(128), 16, LLAVA_LOADER)

    @property
    def primary_metric(self) -> str:
        return "f1"  # lmms_eval: pooled over the three splits; lenient: mean of the per-split F1

    columns = ("question_id", "question", "answer", "category")

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        return {
            "sample_id": f"{row['category']}/{row['question_id']}",
            "prompt": f"{row['question'].strip()}{SHORT_ANSWER}",
            "question_id": str(row["question_id"]),
            "answer": row["answer"],
            "category": row["category"],
        }

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        scores = lmms_eval_pope_metrics([r["prediction"] for r in records], [r["answer"] for r in records])
        for category in sorted({r["category"] for r in records}):
            subset = [r for r in records if r["category"] == category]
            metrics = lmms_eval_pope_metrics([r["prediction"] for r in subset], [r["answer"] for r in subset])
            scores.update({f"{category}/{name}": value for name, value in metrics.items()})
        return scores

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return self._split_means(records, pope_metrics)

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return self._split_means(records, llava_pope_metrics)

    @staticmethod
    def _split_means(
        records: Sequence[Mapping[str, Any]],
        metrics_of: Callable[[Sequence[str], Sequence[str]], dict[str, float]],
    ) -> dict[str, float]:
        categories = sorted({r["category"] for r in records})
        scores: dict[str, float] = {}
        for category in categories:
            subset = [r for r in records if r["category"] == category]
            metrics = metrics_of([r["prediction"] for r in subset], [r["answer"] for r in subset])
            scores.update({f"{category}/{name}": value for name, value in metrics.items()})
        for name in ("accuracy", "f1"):
            scores[name] = sum(scores[f"{category}/{name}"] for category in categories) / len(categories)
        return scores


class MMEBenchmark(HubBenchmark):
    """MME (lmms-lab/MME, test: 14 subtasks, two yes/no questions per image).

    lmms-eval ``mme``: the question, stripped, loses its " Please answer yes or no." and gains the short-answer
    post-prompt. ``limit`` counts images (question pairs), since the score needs both questions of an image. Both
    protocols score as lmms-eval's ``mme/utils.py`` (:func:`~fopru.data.metrics.mme_scores`); lmms-eval generates up
    to 16 new tokens.
    """

    GENERATION = generation(GenerationSettings(16), 16)
    UNSUPPORTED_REASON = "LLaVA's mme.sh scores with MME's own eval tool, which the LLaVA repository does not hold"

    @property
    def primary_metric(self) -> str:
        return "mme_perception"

    columns = ("question_id", "question", "answer", "category")
    YES_NO_SUFFIX = " Please answer yes or no."

    def groups(self, raw: Dataset, positions: list[int]) -> Sequence[Hashable]:
        question_ids = list(raw["question_id"])
        return [question_ids[position] for position in positions]

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        question = row["question"].strip().replace(self.YES_NO_SUFFIX, "")
        return {
            "sample_id": f"{row['question_id']}#{position}",  # question_id names the image, shared by two questions
            "prompt": f"{question}{SHORT_ANSWER}",
            "question_id": row["question_id"],
            "answer": row["answer"],
            "category": row["category"],
        }

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return mme_scores(records)

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return mme_scores(records)


class GQABenchmark(HubBenchmark):
    """GQA (lmms-lab/GQA, testdev balanced: 12,578 questions on 398 images), exact match.

    Questions and images are two configs of the dataset, joined on ``imageId`` == ``id`` as lmms-eval's
    ``gqa_process_docs`` does. Prompt: ``question + "\\nAnswer the question using a single word or phrase."``, up
    to 16 new tokens. ``lmms_eval``: :func:`~fopru.data.metrics.lmms_eval_exact_match` (``gqa.yaml``);
    ``lenient``: :func:`~fopru.data.metrics.exact_match`.
    """

    GENERATION = generation(GenerationSettings(16), 16)
    UNSUPPORTED_REASON = "LLaVA's gqa.sh scores with GQA's own eval.py, which the LLaVA repository does not hold"
    columns = ("id", "imageId", "question", "answer")

    def __init__(
        self,
        dataset: str,
        split: str,
        config: str | None = None,
        image_config: str = "testdev_balanced_images",
        limit: int | None = None,
        seed: int = 0,
        scoring: str = DEFAULT_SCORING,
    ) -> None:
        super().__init__(dataset, split, config, limit, seed, scoring)
        self.image_config = image_config

    def images(
        self, raw: Dataset, positions: list[int], records: Sequence[dict[str, Any]]
    ) -> tuple[Dataset, Sequence[int]]:
        images = load_split(self.dataset, self.image_config, self.split)
        where = f"{self.where}, images from config {self.image_config!r}"
        _require_columns(images, ("id", "image"), where)
        row_of_image = {image_id: row for row, image_id in enumerate(images["id"])}
        missing = sorted({r["image_id"] for r in records} - set(row_of_image))
        if missing:
            raise ConfigError(f"{where}: no image for imageId(s) {missing[:5]}")
        return images, [row_of_image[r["image_id"]] for r in records]

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        return {
            "sample_id": str(row["id"]),
            "prompt": f"{row['question']}{SHORT_ANSWER}",
            "image_id": row["imageId"],
            "answer": row["answer"],
        }

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": _mean([lmms_eval_exact_match(r["prediction"], r["answer"]) for r in records], "GQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": _mean([exact_match(r["prediction"], r["answer"]) for r in records], "GQA")}


class TextVQABenchmark(HubBenchmark):
    """TextVQA (lmms-lab/textvqa, validation: 5,000 questions, 10 answers each), VQA accuracy.

    lmms-eval ``textvqa_val``: ``question.capitalize()`` (which also lower-cases the rest), then, with ``ocr``
    (default off, as in lmms-eval's default), ``"\\nReference OCR token: " + ", ".join(ocr_tokens)``, then the
    short-answer post-prompt. ``lmms_eval``: ``textvqa/utils.py``'s VQA accuracy
    (:func:`~fopru.data.metrics.lmms_eval_vqa_accuracy`), generation as its yaml (no ``max_new_tokens``, so the
    wrappers' 1024; answers cut at ``"ASSISTANT:"``). ``lenient``: :func:`~fopru.data.metrics.vqa_accuracy`.
    """

    GENERATION = generation(GenerationSettings(LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS, ASSISTANT_TURN), 16, LLAVA_LOADER)
    columns = ("question_id", "question", "answers", "ocr_tokens")

    def __init__(
        self,
        dataset: str,
        split: str,
        config: str | None = None,
        ocr: bool | None = None,
        limit: int | None = None,
        seed: int = 0,
        scoring: str = DEFAULT_SCORING,
    ) -> None:
        super().__init__(dataset, split, config, limit, seed, scoring)
        # LLaVA's TextVQA questions (llava_textvqa_val_v051_ocr.jsonl) carry the OCR tokens; lmms-eval's default not.
        self.ocr = ocr if ocr is not None else self.scoring == "llava"

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        reference = f"\nReference OCR token: {', '.join(row['ocr_tokens'])}" if self.ocr else ""
        return {
            "sample_id": str(row["question_id"]),
            "prompt": f"{row['question'].capitalize()}{reference}{SHORT_ANSWER}",
            "answers": list(row["answers"]),
        }

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        scores = [lmms_eval_vqa_accuracy(r["prediction"], r["answers"], textvqa=True) for r in records]
        return {"accuracy": _mean(scores, "TextVQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": _mean([vqa_accuracy(r["prediction"], r["answers"]) for r in records], "TextVQA")}

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        # llava/eval/m4c_evaluator.py: the same processor and leave-one-out average as lmms-eval's textvqa/utils.py.
        return self.score_lmms_eval(records)


class VQAv2Benchmark(HubBenchmark):
    """VQAv2 (lmms-lab/VQAv2, validation: 214,354 questions, 10 answers each), VQA accuracy.

    Prompt: ``question + "\\nAnswer the question using a single word or phrase."`` (lmms-eval's VQAv2 template and
    LLaVA-1.5's own evaluation prompt), up to 16 new tokens. ``lmms_eval``: ``vqav2/utils.py``'s VQA accuracy
    (:func:`~fopru.data.metrics.lmms_eval_vqa_accuracy`, without TextVQA's first normalization step);
    ``lenient``: :func:`~fopru.data.metrics.vqa_accuracy`.
    """

    GENERATION = generation(GenerationSettings(16), 16)
    UNSUPPORTED_REASON = "LLaVA's vqav2.sh converts predictions for the test-dev evaluation server, which scores them"
    columns = ("question_id", "question", "answers")

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        return {
            "sample_id": str(row["question_id"]),
            "prompt": f"{row['question']}{SHORT_ANSWER}",
            "answers": [answer["answer"] for answer in row["answers"]],
        }

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        scores = [lmms_eval_vqa_accuracy(r["prediction"], r["answers"], textvqa=False) for r in records]
        return {"accuracy": _mean(scores, "VQAv2")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": _mean([vqa_accuracy(r["prediction"], r["answers"]) for r in records], "VQAv2")}


class MultipleChoiceBenchmark(HubBenchmark):
    """Shared scoring of lettered multiple choice: records carry ``choices`` (option texts) and ``answer`` (letter).

    ``lmms_eval``: the share of questions :meth:`lmms_eval_correct` (the task's own reading rule) calls right.
    ``lenient``: :func:`~fopru.data.metrics.multiple_choice_accuracy`, any letter format or the option's text.
    """

    @abstractmethod
    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        """Whether lmms-eval's rule for this task reads the record's prediction as its answer letter."""

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        rights = [float(self.lmms_eval_correct(record)) for record in records]
        return {"accuracy": _mean(rights, type(self).__name__)}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        predictions = [r["prediction"] for r in records]
        return {
            "accuracy": multiple_choice_accuracy(
                predictions, [r["choices"] for r in records], [r["answer"] for r in records]
            )
        }


class ScienceQABenchmark(MultipleChoiceBenchmark):
    """ScienceQA-IMG (lmms-lab/ScienceQA, config ScienceQA-IMG, test: 2,017 questions with an image).

    lmms-eval ``scienceqa_img``: ``"Context: {hint}\\n"`` when there is a hint, the question, the lettered options
    (``"A. ..."`` one per line), then ``"\\nAnswer with the option's letter from the given choices directly."``, up
    to 16 new tokens; read by :func:`~fopru.data.metrics.scienceqa_correct` (``scienceqa/utils.py``).
    """

    GENERATION = generation(GenerationSettings(16), 8, LLAVA_SCIENCE)
    columns = ("question", "choices", "answer", "hint")

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return scienceqa_correct(record["prediction"], record["answer"])

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """``llava/eval/eval_science_qa.py``'s accuracy (:func:`~fopru.data.metrics.llava_scienceqa_letter`)."""
        rights = [llava_scienceqa_letter(r["prediction"], len(r["choices"])) == r["answer"] for r in records]
        return {"accuracy": _mean([float(right) for right in rights], "ScienceQA")}

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        context = f"Context: {row['hint']}\n" if row["hint"] else ""
        choices = list(row["choices"])
        return {
            "sample_id": str(position),
            "prompt": f"{context}{row['question']}\n{_lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": _letter(row["answer"], choices, self.where),
        }


class AI2DBenchmark(MultipleChoiceBenchmark):
    """AI2D (lmms-lab/ai2d, test: 3,088 diagram questions).

    lmms-eval ``ai2d`` (``mcq`` format): the question, the lettered options, then the option-letter post-prompt, up
    to 16 new tokens; read by :func:`~fopru.data.metrics.ai2d_correct` (``ai2d/utils.py`` and ``ai2d.yaml``).
    """

    GENERATION = generation(GenerationSettings(16), 8)
    UNSUPPORTED_REASON = "LLaVA-1.5's evaluation scripts do not cover AI2D"
    columns = ("question", "options", "answer")

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return ai2d_correct(record["prediction"], record["answer"])

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        choices = list(row["options"])
        return {
            "sample_id": str(position),
            "prompt": f"{row['question']}\n{_lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": _letter(row["answer"], choices, self.where),
        }


class SEEDBenchmark(MultipleChoiceBenchmark):
    """SEED-Bench image questions (lmms-lab/SEED-Bench, test, ``data_type == "image"``: 14,233 of 17,990).

    lmms-eval ``seedbench``: the question, ``"A. ..."`` to ``"D. ..."`` one per line, then the option-letter
    post-prompt. The dataset stores a list of images per row (video rows hold frames); image rows hold one.
    ``lmms_eval`` reads the first character (:func:`~fopru.data.metrics.seedbench_correct`, ``seedbench/utils.py``;
    ``accuracy`` is its ``seed_image``); generation as its yaml: no ``max_new_tokens`` (1024), cut at
    ``"ASSISTANT:"``.
    """

    GENERATION = generation(GenerationSettings(LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS, ASSISTANT_TURN), 8, LLAVA_LOADER)
    columns = ("question_id", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer", "data_type")

    def candidates(self, raw: Dataset) -> list[int]:
        return [position for position, kind in enumerate(raw["data_type"]) if kind == "image"]

    def images(
        self, raw: Dataset, positions: list[int], records: Sequence[dict[str, Any]]
    ) -> tuple[Dataset, Sequence[int]]:
        frames = raw.select(positions).select_columns(["image"])
        frames = frames.cast_column("image", datasets.Sequence(Image(decode=False)))
        single = frames.map(
            self._only_image, batched=True, features=Features({"image": Image(decode=False)}), desc="SEED images"
        )
        return single, range(len(positions))

    def _only_image(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        counts = {len(row_images) for row_images in batch["image"]}
        if counts != {1}:
            raise ConfigError(f"{self.where}: an image question must have one image, found rows with {counts}")
        return {"image": [row_images[0] for row_images in batch["image"]]}

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        choices = [row["choice_a"], row["choice_b"], row["choice_c"], row["choice_d"]]
        return {
            "sample_id": str(row["question_id"]),
            "prompt": f"{row['question']}\n{_lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": row["answer"],
        }

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return seedbench_correct(record["prediction"], record["answer"])

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """``scripts/convert_seed_for_submission.py``: the stripped prediction must be exactly the answer letter."""
        return {"accuracy": _mean([float(r["prediction"] == r["answer"]) for r in records], "SEED-Bench")}


def _present(option: object) -> bool:
    """lmms-eval's test for an MMBench option or hint: not None, not empty, not NaN, not the string "nan"."""
    if option is None or option == "" or option == "nan":
        return False
    return not (isinstance(option, float) and math.isnan(option))


class MMBenchBenchmark(MultipleChoiceBenchmark):
    """MMBench English dev (lmms-lab/MMBench, config en, split dev: 4,329 rows).

    The dev split holds each question (``index`` < 1,000,000) and its circular variants (``index + k * 1e6``, options
    rotated). ``circular=False`` keeps only the originals and scores plain accuracy; ``circular=True`` keeps all
    variants and scores MMBench's CircularEval (a question counts if every variant is right; ``limit`` counts
    questions); ``circular=None`` takes the protocol's default: circular under ``lmms_eval`` (what
    ``mmbench_en_dev`` reports), not under ``lenient``. Prompt as lmms-eval's ``mmbench_en_dev``:
    ``"{hint} {question} There are several options:\\nA. ...`` (hint only when present), then ``"\\n"`` and the
    option-letter post-prompt, which itself starts with a newline. ``lmms_eval`` scores with
    :func:`~fopru.data.metrics.mmbench_scores` (no GPT judge: as ``mmbench_en_dev_static``, with the counts of
    answers the judge would have been asked about and of unreadable ones); generation as its yaml (1024 new
    tokens, cut at ``"ASSISTANT:"``).
    """

    GENERATION = generation(GenerationSettings(1024, ASSISTANT_TURN), 8)
    UNSUPPORTED_REASON = "LLaVA's mmbench.sh converts predictions for MMBench's submission server, which scores them"

    columns = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category")
    VARIANT_STRIDE = 1_000_000
    OPTIONS_HEADER = "There are several options:"  # lmms-eval's mmbench.yaml metadata.sys_prompt

    def __init__(
        self,
        dataset: str,
        split: str,
        config: str | None = None,
        circular: bool | None = None,
        limit: int | None = None,
        seed: int = 0,
        scoring: str = DEFAULT_SCORING,
    ) -> None:
        super().__init__(dataset, split, config, limit, seed, scoring)
        self.circular = circular if circular is not None else self.scoring == "lmms_eval"

    def candidates(self, raw: Dataset) -> list[int]:
        indices = [int(index) for index in raw["index"]]
        return [p for p, index in enumerate(indices) if self.circular or index < self.VARIANT_STRIDE]

    def groups(self, raw: Dataset, positions: list[int]) -> Sequence[Hashable]:
        indices = list(raw["index"])
        return [int(indices[position]) % self.VARIANT_STRIDE for position in positions]

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        options = [row[letter] for letter in "ABCD"]
        count = sum(_present(option) for option in options)
        if not all(_present(option) for option in options[:count]):
            raise ConfigError(f"{self.where}: index {row['index']} has options missing in between: {options}")
        choices = [str(option) for option in options[:count]]
        listed = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", choices, strict=False))
        query = f"{row['question']} {self.OPTIONS_HEADER}{listed}"
        if _present(row["hint"]):
            query = f"{row['hint']} {query}"
        return {
            "sample_id": str(row["index"]),
            "prompt": f"{query}\n{OPTION_LETTER}",
            "index": int(row["index"]) % self.VARIANT_STRIDE,
            "choices": choices,
            "answer": row["answer"],
            "category": row["category"],
        }

    @property
    def primary_metric(self) -> str:
        return "circular_accuracy" if self.circular else "accuracy"

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return mmbench_scores([record], circular=False)["accuracy"] == 1.0

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return mmbench_scores(records, circular=self.circular)

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        if self.circular:
            return {"circular_accuracy": mmbench_circular_accuracy(records)}
        return super().score_lenient(records)
