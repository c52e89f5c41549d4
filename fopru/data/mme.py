"""MME, as lmms-eval's ``tasks/mme`` scores it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from datasets import Dataset

from fopru.data.hub import HubBenchmark
from fopru.data.metrics import mme_scores
from fopru.data.scoring import GenerationSettings, per_protocol
from fopru.prompts import SHORT_ANSWER


class MMEBenchmark(HubBenchmark):
    """MME (lmms-lab/MME, test: 14 subtasks, two yes/no questions per image).

    lmms-eval ``mme``: the question, stripped, loses its " Please answer yes or no." and gains the short-answer
    post-prompt. ``limit`` counts images (question pairs), since the score needs both questions of an image. Both
    protocols score as lmms-eval's ``mme/utils.py`` (:func:`~fopru.data.metrics.mme_scores`); lmms-eval generates up
    to 16 new tokens.
    """

    GENERATION = per_protocol(GenerationSettings(16), 16)
    BOOTSTRAP_UNIT = "question_id"  # an image: its two questions are scored together
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
