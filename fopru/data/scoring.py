"""Scoring protocols: which rules read, normalize and aggregate a benchmark's answers, and under which generation
settings.

A benchmark's ``scoring`` key (``data.scoring=lenient``) picks one. It is part of the ``data`` config, so the results
folder of a run (named after a hash of that config) differs between protocols: their predictions and scores are
never mixed. Every ``result.json`` and ``results.csv`` row records the protocol's :attr:`ScoringProtocol.label`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fopru.data.metrics import LLAVA_REPOSITORY, LLAVA_REVISION, LMMS_EVAL_REPOSITORY, LMMS_EVAL_REVISION
from fopru.errors import ConfigError


@dataclass(frozen=True)
class ScoringProtocol:
    """A named set of scoring rules.

    Attributes:
        name: the value of ``data.scoring``.
        follows: what the rules re-express, in words.
        revision: the commit of the code they follow, or None for fopru's own rules.
        comparable: whether the numbers can be set beside published tables.
    """

    name: str
    follows: str
    revision: str | None
    comparable: bool

    @property
    def label(self) -> str:
        """``name@revision`` (just ``name`` without a revision): what results record."""
        return f"{self.name}@{self.revision}" if self.revision else self.name


LMMS_EVAL = ScoringProtocol(
    "lmms_eval",
    f"{LMMS_EVAL_REPOSITORY}'s task code (lmms_eval/tasks/<task>/utils.py and the task yaml files)",
    LMMS_EVAL_REVISION,
    comparable=True,
)
LENIENT = ScoringProtocol(
    "lenient",
    "fopru's forgiving answer readers (any letter format, yes/no phrases, per-split POPE means)",
    None,
    comparable=False,
)
LLAVA = ScoringProtocol(
    "llava",
    f"{LLAVA_REPOSITORY}'s evaluation scripts (llava/eval/*.py, scripts/v1_5/eval/*), where they hold the scoring",
    LLAVA_REVISION,
    comparable=True,
)
#: Every protocol, by name; ``lmms_eval`` is the default.
SCORING_PROTOCOLS = {protocol.name: protocol for protocol in (LMMS_EVAL, LENIENT, LLAVA)}
DEFAULT_SCORING = LMMS_EVAL.name


def scoring_protocol(name: str) -> ScoringProtocol:
    """The protocol called ``name``; a clear error naming the choices for any other value."""
    if name not in SCORING_PROTOCOLS:
        raise ConfigError(f"scoring={name!r} is not a scoring protocol; the choices are {', '.join(SCORING_PROTOCOLS)}")
    return SCORING_PROTOCOLS[name]


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated for a benchmark under one protocol (greedy decoding always).

    Attributes:
        max_new_tokens: the most tokens generated per answer (lmms-eval: its task yaml's ``generation_kwargs``, or
            its model wrappers' default of 1024 where the yaml sets none).
        stop: strings at which the answer is cut before scoring (the yaml's ``until``); generation itself stops at
            the end-of-sequence token.
    """

    max_new_tokens: int
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens={self.max_new_tokens} must be at least 1")

    def cut(self, prediction: str) -> str:
        """The prediction up to its first stop string, stripped."""
        for stop in self.stop:
            prediction = prediction.split(stop, 1)[0]
        return prediction.strip()


# lmms-eval's model wrappers generate up to 1024 new tokens when a task yaml sets no max_new_tokens.
LMMS_EVAL_DEFAULT_MAX_NEW_TOKENS = 1024
# The ``until`` of the lmms-eval task yaml files that set one (TextVQA, SEED-Bench, MMBench).
ASSISTANT_TURN = ("ASSISTANT:",)
# LLaVA's model_vqa_loader.py (POPE, TextVQA, SEED-Bench) and model_vqa_science.py (ScienceQA) generate up to
# 128 and 1024 new tokens.
LLAVA_LOADER = GenerationSettings(128)
LLAVA_SCIENCE = GenerationSettings(1024)


def per_protocol(
    lmms_eval: GenerationSettings, lenient_max_new_tokens: int, llava: GenerationSettings | None = None
) -> dict[str, GenerationSettings]:
    """A benchmark's generation settings per protocol: lmms-eval's task yaml, the lenient protocol's own and, where
    the LLaVA repository scores the benchmark, its evaluation script's."""
    settings = {LMMS_EVAL.name: lmms_eval, LENIENT.name: GenerationSettings(lenient_max_new_tokens)}
    if llava is not None:
        settings[LLAVA.name] = llava
    return settings
