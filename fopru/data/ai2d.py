"""AI2D, as lmms-eval's ``tasks/ai2d`` scores it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fopru.data.hub import MultipleChoiceBenchmark
from fopru.data.metrics import ai2d_correct
from fopru.data.scoring import GenerationSettings, per_protocol
from fopru.prompts import OPTION_LETTER, lettered, option_letter


class AI2DBenchmark(MultipleChoiceBenchmark):
    """AI2D (lmms-lab/ai2d, test: 3,088 diagram questions).

    lmms-eval ``ai2d`` (``mcq`` format): the question, the lettered options, then the option-letter post-prompt, up
    to 16 new tokens; read by :func:`~fopru.data.metrics.ai2d_correct` (``ai2d/utils.py`` and ``ai2d.yaml``).
    """

    GENERATION = per_protocol(GenerationSettings(16), 8)
    UNSUPPORTED_REASON = "LLaVA-1.5's evaluation scripts do not cover AI2D"
    columns = ("question", "options", "answer")

    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        return ai2d_correct(record["prediction"], record["answer"])

    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        choices = list(row["options"])
        return {
            "sample_id": str(position),
            "prompt": f"{row['question']}\n{lettered(choices)}{OPTION_LETTER}",
            "choices": choices,
            "answer": option_letter(row["answer"], choices, self.where),
        }
