"""The shared shape of the hub benchmarks (lmms-lab datasets, as lmms-eval evaluates them).

Every hub benchmark reads the lmms-lab copy that lmms-eval evaluates on (same dataset id, config and split) and
builds the prompt of lmms-eval's ``default`` (LLaVA) ``doc_to_text`` for that task, so that numbers can be set beside
lmms-eval's. The dataset can also be a local folder (a ``Dataset.save_to_disk`` folder, a ``DatasetDict`` one, a
folder per config, or a folder of ``<split>-*.parquet`` files such as a hub snapshot); tests load their fixtures
through the same code. One module per benchmark holds its prompt and its scoring under each protocol.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

from datasets import Dataset

from fopru.data.base import Benchmark, average
from fopru.data.loading import assemble, load_split, require_columns, sample_positions
from fopru.data.metrics import multiple_choice_accuracy
from fopru.data.scoring import DEFAULT_SCORING


class HubBenchmark(Benchmark):
    """Shared loading of a benchmark kept in a hub dataset (or a local copy of one).

    ``load`` reads the split, keeps the rows that belong to the benchmark (:meth:`candidates`), draws ``limit``
    groups of rows (:meth:`groups`), turns each kept row's ``columns`` into a record (:meth:`record`: sample_id,
    prompt and scoring fields) and lays the records beside the rows' images (:meth:`images`).

    ``dataset`` is a hub id (``lmms-lab/POPE``) or a local folder holding the same split(s).
    """

    columns: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        dataset: str,
        split: str,
        config: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        scoring: str = DEFAULT_SCORING,
    ) -> None:
        super().__init__(limit, seed, scoring)
        self.dataset = dataset
        self.config = config
        self.split = split

    @property
    def where(self) -> str:
        return f"{type(self).__name__}(dataset={self.dataset!r}, config={self.config!r}, split={self.split!r})"

    def load(self) -> Dataset:
        raw = load_split(self.dataset, self.config, self.split)
        require_columns(raw, self.columns, self.where)
        candidates = self.candidates(raw)
        groups = self.groups(raw, candidates)
        chosen = [candidates[i] for i in sample_positions(groups, self.limit, self.seed, self.where)]
        rows = raw.select_columns(list(self.columns))
        if len(chosen) != len(raw):
            rows = rows.select(chosen)
        records = [self.record(row, position) for row, position in zip(rows.to_list(), chosen, strict=True)]
        images, image_rows = self.images(raw, chosen, records)
        return assemble(records, images, image_rows, self.where)

    def candidates(self, raw: Dataset) -> list[int]:
        """Positions of the rows that belong to the benchmark (all, unless a benchmark filters)."""
        return list(range(len(raw)))

    def groups(self, raw: Dataset, positions: list[int]) -> Sequence[Hashable]:
        """One key per candidate row; ``limit`` keeps or drops rows with equal keys together."""
        return positions

    def images(
        self, raw: Dataset, positions: list[int], records: Sequence[dict[str, Any]]
    ) -> tuple[Dataset, Sequence[int]]:
        """A dataset with an ``image`` column and, per kept row (``positions``, ``records``), its image's row there."""
        return raw, positions

    @abstractmethod
    def record(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        """The sample of one source row (its ``columns``; ``position`` is its row number in the split)."""


class MultipleChoiceBenchmark(HubBenchmark):
    """Shared scoring of lettered multiple choice: records carry ``choices`` (option texts) and ``answer`` (letter).

    ``lmms_eval``: the share of questions :meth:`lmms_eval_correct` (the task's own reading rule) calls right.
    ``lenient``: :func:`~fopru.data.metrics.multiple_choice_accuracy`, any letter format or the option's text.
    """

    @abstractmethod
    def lmms_eval_correct(self, record: Mapping[str, Any]) -> bool:
        """Whether lmms-eval's rule for this task reads the record's prediction as its answer letter."""

    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        rights = [float(self.lmms_eval_correct(record)) for record in records]
        return {"accuracy": average(rights, type(self).__name__)}

    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        predictions = [r["prediction"] for r in records]
        return {
            "accuracy": multiple_choice_accuracy(
                predictions, [r["choices"] for r in records], [r["answer"] for r in records]
            )
        }
