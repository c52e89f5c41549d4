"""GQA testdev balanced, as lmms-eval's ``tasks/gqa`` scores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Dataset

from fopru.data.base import average
from fopru.data.hub import HubBenchmark
from fopru.data.loading import load_split, require_columns
from fopru.data.metrics import exact_match, lmms_eval_exact_match
from fopru.data.scoring import DEFAULT_SCORING, GenerationSettings, per_protocol
from fopru.errors import ConfigError
from fopru.prompts import SHORT_ANSWER


class GQABenchmark(HubBenchmark):
    """GQA (lmms-lab/GQA, testdev balanced: 12,578 questions on 398 images), exact match.

    Questions and images are two configs of the dataset, joined on ``imageId`` == ``id`` as lmms-eval's
    ``gqa_process_docs`` does. Prompt: ``question + "\\nAnswer the question using a single word or phrase."``, up
    to 16 new tokens. ``lmms_eval``: :func:`~fopru.data.metrics.lmms_eval_exact_match` (``gqa.yaml``);
    ``lenient``: :func:`~fopru.data.metrics.exact_match`.
    """

    GENERATION = per_protocol(GenerationSettings(16), 16)
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
        require_columns(images, ("id", "image"), where)
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
        return {"accuracy": average([lmms_eval_exact_match(r["prediction"], r["answer"]) for r in records], "GQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": average([exact_match(r["prediction"], r["answer"]) for r in records], "GQA")}
