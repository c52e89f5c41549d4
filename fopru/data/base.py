"""The contract every benchmark meets: a dataset of prompts and images in, official metrics out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import datasets

from fopru.data.scoring import DEFAULT_SCORING, GenerationSettings, ScoringProtocol, scoring_protocol
from fopru.errors import ConfigError

#: Columns every loaded benchmark has, whatever else it carries for scoring.
CONTRACT_COLUMNS = ("sample_id", "image", "prompt")


class Benchmark(ABC):
    """An evaluation benchmark: which samples, which prompt text, which official metric.

    A benchmark is registered by ``conf/data/<name>.yaml`` (``_target_`` plus config-time values: the dataset id or
    a local folder, config, split, ``limit``, ``seed``). The evaluation loop calls exactly two methods:

    ``load() -> datasets.Dataset``, one row per sample, with at least

    - ``sample_id`` (str): unique within the benchmark and stable across runs, limits and seeds, so that predictions
      of two runs (say, two pruning budgets) can be joined on it;
    - ``image``: a ``datasets.Image`` feature that decodes to an RGB ``PIL.Image.Image`` on access (images are not
      decoded at load time, so loading stays cheap);
    - ``prompt`` (str): the text that follows the image in the user turn, exactly as lmms-eval builds it for its
      LLaVA (``default``) prompt, i.e. the question plus the task's post-prompt (for instance
      ``"...\\nAnswer the question using a single word or phrase."``). Chat templates and image placeholders such
      as ``"USER: <image>\\n{prompt} ASSISTANT:"`` are the model adapter's business, never the benchmark's;
    - whatever ``score`` needs (``answer``, ``answers``, ``choices``, ``category``, ...), plain Python values.

    With ``limit=N`` it returns a seeded random subsample of N samples (the same ``N`` and ``seed`` give the same
    samples; rows keep their original order). Benchmarks whose metric needs groups of rows (MME's question pairs,
    MMBench's circular variants) sample whole groups, so ``N`` counts groups there. It never returns partial data
    silently: a missing dataset, column, image or split, or a ``limit`` larger than the benchmark, raises a
    :class:`~fopru.errors.ConfigError` naming what is missing.

    ``score(records) -> dict[str, float]`` takes one record per sample: the sample's row without the image, plus
    ``"prediction"`` (the model's decoded answer, str). It returns the benchmark's official metric(s), computed by
    the functions of :mod:`fopru.data.metrics`, under short stable keys (``"accuracy"``, ``"adversarial/f1"``,
    ``"mme_perception"``, ...). Fractions are in [0, 1]; MME keeps its own 0..200-per-subtask scale; counts (such
    as MMBench's ``unreadable``) are floats too.

    ``scoring`` names the protocol (:mod:`fopru.data.scoring`): ``lmms_eval`` (default) follows lmms-eval's task
    code for the benchmark, ``lenient`` fopru's forgiving readers, ``llava`` the LLaVA repository's evaluation
    scripts (only where they hold the scoring: POPE, ScienceQA-IMG, TextVQA, SEED-Bench; elsewhere the constructor
    raises). ``score`` cuts each prediction at the protocol's stop strings and hands the records to
    :meth:`score_lmms_eval`, :meth:`score_lenient` or :meth:`score_llava`. The protocol also sets
    the generation (``GENERATION[scoring]``: ``max_new_tokens`` and stop strings, lmms-eval's task yaml
    ``generation_kwargs`` under ``lmms_eval``) and may set reported defaults (MMBench's circular evaluation).

    Constructors take only config-time values (strings, numbers, bools) and no ``**kwargs``, so a typo in a YAML
    file fails loudly. Loading happens in ``load``, never in ``__init__``, so composing and validating a run
    configuration does not touch the network or the disk.
    """

    #: Generation settings per scoring protocol name; a protocol absent here cannot score the benchmark.
    GENERATION: ClassVar[Mapping[str, GenerationSettings]]
    #: Why a protocol absent from ``GENERATION`` cannot score the benchmark.
    UNSUPPORTED_REASON: ClassVar[str] = "the LLaVA repository holds no scoring code for it"
    #: The record field naming the unit :meth:`score` treats as one sample (``question_id`` for MME, whose score
    #: needs both questions of an image): bootstrap intervals (:mod:`fopru.eval.uncertainty`) resample these units.
    BOOTSTRAP_UNIT: ClassVar[str] = "sample_id"

    def __init__(self, limit: int | None = None, seed: int = 0, scoring: str = DEFAULT_SCORING) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit={limit!r} must be a positive integer or null (all samples)")
        self.limit = limit
        self.seed = seed
        self.protocol: ScoringProtocol = scoring_protocol(scoring)
        if self.protocol.name not in self.GENERATION:
            raise ConfigError(
                f"{type(self).__name__} cannot be scored with scoring={scoring!r}: {self.UNSUPPORTED_REASON}; its "
                f"protocols are {', '.join(self.GENERATION)}"
            )

    @property
    def scoring(self) -> str:
        """The scoring protocol's name."""
        return self.protocol.name

    @property
    def generation(self) -> GenerationSettings:
        """The generation settings of this benchmark under its scoring protocol."""
        return self.GENERATION[self.scoring]

    @property
    def max_new_tokens(self) -> int:
        """The most tokens generated per answer."""
        return self.generation.max_new_tokens

    @property
    def primary_metric(self) -> str:
        """The key of :meth:`score`'s result that summarises the benchmark (the y-axis of Pareto curves)."""
        return "accuracy"

    @abstractmethod
    def load(self) -> datasets.Dataset:
        """The benchmark's samples (all of them, or ``limit`` of them drawn with ``seed``), as described above."""

    def score(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Official metric(s) of ``records``: each a row of :meth:`load` without its image, plus ``"prediction"``."""
        if not records:
            raise ConfigError(f"{type(self).__name__}: no records to score")
        answered = [{**record, "prediction": self.generation.cut(str(record["prediction"]))} for record in records]
        if self.scoring == "lenient":
            return self.score_lenient(answered)
        if self.scoring == "llava":
            return self.score_llava(answered)
        return self.score_lmms_eval(answered)

    @abstractmethod
    def score_lmms_eval(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The scores lmms-eval's task code gives ``records`` (predictions already cut at the stop strings)."""

    @abstractmethod
    def score_lenient(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The ``lenient`` protocol's scores of ``records``."""

    def score_llava(self, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The scores the LLaVA repository's evaluation scripts give ``records``, where it has them."""
        raise ConfigError(f"{type(self).__name__} has no llava scoring: {self.UNSUPPORTED_REASON}")

    def train_split(self) -> Benchmark:
        """The same benchmark on its training split (rows with an ``answer`` string), for ``stage=train``."""
        raise ConfigError(f"{type(self).__name__} has no training split: stage=train supports data=easyvqa")


def average(values: Sequence[float], where: str) -> float:
    """The mean of per-sample scores; no scores at all is an error naming ``where``."""
    if not values:
        raise ConfigError(f"{where}: no records to score")
    return sum(values) / len(values)
