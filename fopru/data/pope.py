"""POPE, as lmms-eval's ``tasks/pope`` (and LLaVA's ``llava/eval/eval_pope.py``) scores it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fopru.data.hub import HubBenchmark
from fopru.data.metrics import llava_pope_metrics, lmms_eval_pope_metrics, pope_metrics
from fopru.data.scoring import LLAVA_LOADER, GenerationSettings, per_protocol
from fopru.prompts import SHORT_ANSWER


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

    GENERATION = per_protocol(GenerationSettings(128), 16, LLAVA_LOADER)

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
