"""TextVQA validation, as lmms-eval's ``tasks/textvqa`` (and LLaVA's ``llava/eval/eval_textvqa.py``) scores it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fopru.data.base import average
from fopru.data.hub import HubBenchmark
from fopru.data.metrics import lmms_eval_vqa_accuracy, vqa_accuracy
from fopru.data.scoring import (
    ASSISTANT_TURN,
    DEFAULT_SCORING,
    LLAVA_LOADER,
    LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    per_protocol,
)
from fopru.prompts import SHORT_ANSWER


class TextVQABenchmark(HubBenchmark):
    """TextVQA (lmms-lab/textvqa, validation: 5,000 questions, 10 answers each), VQA accuracy.

    lmms-eval ``textvqa_val``: ``question.capitalize()`` (which also lower-cases the rest), then, with ``ocr``
    (default off, as in lmms-eval's default), ``"\\nReference OCR token: " + ", ".join(ocr_tokens)``, then the
    short-answer post-prompt. ``lmms_eval``: ``textvqa/utils.py``'s VQA accuracy
    (:func:`~fopru.data.metrics.lmms_eval_vqa_accuracy`), generation as its yaml (no ``max_new_tokens``, so the
    wrappers' 1024; answers cut at ``"ASSISTANT:"``). ``lenient``: :func:`~fopru.data.metrics.vqa_accuracy`.
    """

    GENERATION = per_protocol(GenerationSettings(LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS, ASSISTANT_TURN), 16, LLAVA_LOADER)
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
        return {"accuracy": average(scores, "TextVQA")}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return {"accuracy": average([vqa_accuracy(r["prediction"], r["answers"]) for r in records], "TextVQA")}

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        # llava/eval/m4c_evaluator.py: the same processor and leave-one-out average as lmms-eval's textvqa/utils.py.
        return self.score_lmms_eval(records)
