"""easy-VQA: the embedded default benchmark, shipped inside the easy-vqa package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import easy_vqa
from datasets import Dataset, Features, Image

from fopru.data.base import Benchmark, average
from fopru.data.loading import assemble, sample_positions
from fopru.data.metrics import exact_match, lmms_eval_exact_match
from fopru.data.scoring import DEFAULT_SCORING, GenerationSettings, per_protocol
from fopru.errors import ConfigError
from fopru.prompts import SHORT_ANSWER


class EasyVQABenchmark(Benchmark):
    """easy-VQA (pip ``easy-vqa``): 64 x 64 images of one coloured shape, 13 one-word answers, exact match.

    ``sample_id`` is ``<split>-<question number>``. Images are opened from the package's PNG files when accessed.
    """

    GENERATION = per_protocol(GenerationSettings(16), 16)
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
        return {"accuracy": average([lmms_eval_exact_match(r["prediction"], r["answer"]) for r in records], "easy-VQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Exact-match accuracy (case, punctuation and surrounding spaces aside)."""
        return {"accuracy": average([exact_match(r["prediction"], r["answer"]) for r in records], "easy-VQA")}
