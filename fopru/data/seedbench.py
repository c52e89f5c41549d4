"""SEED-Bench image questions, as lmms-eval's ``tasks/seedbench`` scores them (and LLaVA's
``scripts/convert_seed_for_submission.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from datasets import Dataset, Features, Image

from fopru.data.base import average
from fopru.data.hub import MultipleChoiceBenchmark
from fopru.data.metrics import seedbench_correct
from fopru.data.scoring import (
    ASSISTANT_TURN,
    LLAVA_LOADER,
    LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    per_protocol,
)
from fopru.errors import ConfigError
from fopru.prompts import OPTION_LETTER, lettered


class SEEDBenchmark(MultipleChoiceBenchmark):
    """SEED-Bench image questions (lmms-lab/SEED-Bench, test, ``data_type == "image"``: 14,233 of 17,990).

    lmms-eval ``seedbench``: the question, ``"A. ..."`` to ``"D. ..."`` one per line, then the option-letter
    post-prompt. The dataset stores a list of images per row (video rows hold frames); image rows hold one.
    ``lmms_eval`` reads the first character (:func:`~fopru.data.metrics.seedbench_correct`, ``seedbench/utils.py``;
    ``accuracy`` is its ``seed_image``); generation as its yaml: no ``max_new_tokens`` (1024), cut at
    ``"ASSISTANT:"``.
    """

    GENERATION = per_protocol(GenerationSettings(LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS, ASSISTANT_TURN), 8, LLAVA_LOADER)
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
            "prompt": f"{row['question']}\n{lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": row["answer"],
        }

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return seedbench_correct(record["prediction"], record["answer"])

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """``scripts/convert_seed_for_submission.py``: the stripped prediction must be exactly the answer letter."""
        return {"accuracy": average([float(r["prediction"] == r["answer"]) for r in records], "SEED-Bench")}
