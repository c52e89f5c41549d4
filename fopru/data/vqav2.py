"""VQAv2 validation, as lmms-eval's ``tasks/vqav2`` scores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fopru.data.base import average
from fopru.data.hub import HubBenchmark
from fopru.data.metrics import lmms_eval_vqa_accuracy, vqa_accuracy
from fopru.data.scoring import GenerationSettings, per_protocol
from fopru.prompts import SHORT_ANSWER


class VQAv2Benchmark(HubBenchmark):
    """VQAv2 (lmms-lab/VQAv2, validation: 214,354 questions, 10 answers each), VQA accuracy.

    Prompt: ``question + "\\nAnswer the question using a single word or phrase."`` (lmms-eval's VQAv2 template and
    LLaVA-1.5's own evaluation prompt), up to 16 new tokens. ``lmms_eval``: ``vqav2/utils.py``'s VQA accuracy
    (:func:`~fopru.data.metrics.lmms_eval_vqa_accuracy`, without TextVQA's first normalization step);
    ``lenient``: :func:`~fopru.data.metrics.vqa_accuracy`.
    """

    GENERATION = per_protocol(GenerationSettings(16), 16)
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
        return {"accuracy": average(scores, "VQAv2")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": average([vqa_accuracy(r["prediction"], r["answers"]) for r in records], "VQAv2")}
