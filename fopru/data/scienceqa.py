"""ScienceQA-IMG, as lmms-eval's ``tasks/scienceqa`` (and LLaVA's ``llava/eval/eval_science_qa.py``) scores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fopru.data.base import average
from fopru.data.hub import MultipleChoiceBenchmark
from fopru.data.metrics import llava_scienceqa_letter, scienceqa_correct
from fopru.data.scoring import LLAVA_SCIENCE, GenerationSettings, per_protocol
from fopru.prompts import OPTION_LETTER, lettered, option_letter


class ScienceQABenchmark(MultipleChoiceBenchmark):
    """ScienceQA-IMG (lmms-lab/ScienceQA, config ScienceQA-IMG, test: 2,017 questions with an image).

    lmms-eval ``scienceqa_img``: ``"Context: {hint}\\n"`` when there is a hint, the question, the lettered options
    (``"A. ..."`` one per line), then ``"\\nAnswer with the option's letter from the given choices directly."``, up
    to 16 new tokens; read by :func:`~fopru.data.metrics.scienceqa_correct` (``scienceqa/utils.py``).
    """

    GENERATION = per_protocol(GenerationSettings(16), 8, LLAVA_SCIENCE)
    columns = ("question", "choices", "answer", "hint")

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return scienceqa_correct(record["prediction"], record["answer"])

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """``llava/eval/eval_science_qa.py``'s accuracy (:func:`~fopru.data.metrics.llava_scienceqa_letter`)."""
        rights = [llava_scienceqa_letter(r["prediction"], len(r["choices"])) == r["answer"] for r in records]
        return {"accuracy": average([float(right) for right in rights], "ScienceQA")}

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        context = f"Context: {row['hint']}\n" if row["hint"] else ""
        choices = list(row["choices"])
        return {
            "sample_id": str(position),
            "prompt": f"{context}{row['question']}\n{lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": option_letter(row["answer"], choices, self.where),
        }
