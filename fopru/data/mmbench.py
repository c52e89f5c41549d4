"""MMBench English dev, as lmms-eval's ``tasks/mmbench`` (``mmbench_evals.py``, without its GPT judge) scores it."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from datasets import Dataset

from fopru.data.hub import MultipleChoiceBenchmark
from fopru.data.metrics import mmbench_circular_accuracy, mmbench_scores
from fopru.data.scoring import ASSISTANT_TURN, DEFAULT_SCORING, GenerationSettings, per_protocol
from fopru.errors import ConfigError
from fopru.prompts import OPTION_LETTER


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

    GENERATION = per_protocol(GenerationSettings(1024, ASSISTANT_TURN), 8)
    UNSUPPORTED_REASON = "LLaVA's mmbench.sh converts predictions for MMBench's submission server, which scores them"

    columns = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category")
    VARIANT_STRIDE = 1_000_000
    BOOTSTRAP_UNIT = "index"  # a question: CircularEval scores its variants together
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
