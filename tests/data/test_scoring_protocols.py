"""The scoring protocols on hand-made prediction sets, benchmark by benchmark.

Each expected ``lmms_eval`` value is worked out by hand from lmms-eval's task code at
:data:`~fopru.data.metrics.LMMS_EVAL_REVISION` (the file is named per benchmark below); each expected ``lenient``
value from fopru's lenient readers as they were before lmms-eval's rules became the default; each ``llava`` value
from the LLaVA repository's evaluation scripts at :data:`~fopru.data.metrics.LLAVA_REVISION`.
"""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from fopru.components import CONFIG_DIR, build, choices
from fopru.data.base import Benchmark
from fopru.data.metrics import (
    llava_pope_reading,
    llava_scienceqa_letter,
    mcq_extract_letter,
    mmbench_can_infer_option,
    mmbench_can_infer_text,
    normalize_vqa_answer,
    normalize_vqav2_answer,
)
from fopru.data.scoring import SCORING_PROTOCOLS
from fopru.errors import ConfigError

HUB = [name for name in choices("data") if "dataset" in OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")]
TEN = 10


def benchmark(name: str, scoring: str, **overrides: Any) -> Benchmark:
    root = OmegaConf.load(CONFIG_DIR / "train_eval.yaml")
    assert isinstance(root, DictConfig)
    root.pop("defaults", None)
    root["data"] = OmegaConf.merge(
        OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml"), {"scoring": scoring}, overrides
    )
    return build("data", root["data"], Benchmark)


def accuracy(name: str, scoring: str, record: dict[str, Any], **overrides: Any) -> float:
    return benchmark(name, scoring, **overrides).score([record])["accuracy"]


# ---------------------------------------------------------------------------------------------------------------------
# Generation settings: each task yaml's generation_kwargs (lmm-eval's wrappers default to 1024 new tokens)
# ---------------------------------------------------------------------------------------------------------------------

# pope.yaml 128; mme.yaml, gqa.yaml, _default_template_vqav2_yaml, scienceqa_img.yaml, ai2d.yaml 16;
# _default_template_textvqa_yaml and seedbench.yaml set only until: ["ASSISTANT:"]; the MMBench template sets both.
LMMS_EVAL_GENERATION = {
    "pope": (128, ()),
    "mme": (16, ()),
    "gqa": (16, ()),
    "vqav2": (16, ()),
    "textvqa": (1024, ("ASSISTANT:",)),
    "scienceqa_img": (16, ()),
    "ai2d": (16, ()),
    "seedbench": (1024, ("ASSISTANT:",)),
    "mmbench": (1024, ("ASSISTANT:",)),
}
# What every benchmark generated before the protocols existed.
LENIENT_MAX_NEW_TOKENS = {"scienceqa_img": 8, "ai2d": 8, "seedbench": 8, "mmbench": 8}


def test_every_hub_benchmark_has_its_task_yaml_generation_settings() -> None:
    assert set(LMMS_EVAL_GENERATION) == set(HUB), "add the new benchmark's lmms-eval generation_kwargs here"
    for name in HUB:
        settings = benchmark(name, "lmms_eval").generation
        assert (settings.max_new_tokens, settings.stop) == LMMS_EVAL_GENERATION[name], name
        lenient = benchmark(name, "lenient").generation
        assert (lenient.max_new_tokens, lenient.stop) == (LENIENT_MAX_NEW_TOKENS.get(name, 16), ()), name
    for name in choices("data"):
        assert {"lmms_eval", "lenient"} <= set(benchmark(name, "lmms_eval").GENERATION) <= set(SCORING_PROTOCOLS)


# model_vqa_loader.py's default --max_new_tokens 128 (pope.sh, textvqa.sh, seed.sh); model_vqa_science.py's 1024.
LLAVA_GENERATION = {"pope": 128, "textvqa": 128, "seedbench": 128, "scienceqa_img": 1024}


def test_llava_scores_only_what_the_llava_repository_scores() -> None:
    for name in choices("data"):
        if name in LLAVA_GENERATION:
            settings = benchmark(name, "llava").generation
            assert (settings.max_new_tokens, settings.stop) == (LLAVA_GENERATION[name], ()), name
        else:
            with pytest.raises(ConfigError, match=r"cannot be scored with scoring='llava': .*; its protocols are"):
                benchmark(name, "llava")


# ---------------------------------------------------------------------------------------------------------------------
# GQA: gqa.yaml's exact_match, ignore_case and ignore_punctuation (api/metrics.py), after task.py's strip
# ---------------------------------------------------------------------------------------------------------------------

GQA = [  # prediction, answer, lmms_eval, lenient
    ("Yes", "yes", 1.0, 1.0),
    ("yes.", "yes", 1.0, 1.0),
    ("Yes .", "yes", 0.0, 1.0),  # "yes ": the space before the deleted period stays
    ("YES!", "yes", 1.0, 1.0),
    ("Yes, it is.", "yes", 0.0, 0.0),  # a sentence around the answer
    ("tshirt", "t-shirt", 1.0, 1.0),
    ("the t-shirt", "t-shirt", 0.0, 0.0),  # articles stay
    ("two", "2", 0.0, 0.0),  # number words stay
    ("dont", "don't", 1.0, 1.0),  # the apostrophe is punctuation
    ("", "yes", 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "answer", "lmms_eval", "lenient"), GQA)
def test_gqa(prediction: str, answer: str, lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "answer": answer}
    assert accuracy("gqa", "lmms_eval", record) == lmms_eval
    assert accuracy("gqa", "lenient", record) == lenient


def test_gqa_mean_over_the_set() -> None:
    records = [{"prediction": p, "answer": a} for p, a, _, _ in GQA]
    assert benchmark("gqa", "lmms_eval").score(records) == {"accuracy": 5 / 10}
    assert benchmark("gqa", "lenient").score(records) == {"accuracy": 6 / 10}


# ---------------------------------------------------------------------------------------------------------------------
# VQAv2 (vqav2/utils.py) and TextVQA (textvqa/utils.py), both on _task_utils/vqa_eval_metric.py
# ---------------------------------------------------------------------------------------------------------------------
# With k of 10 answers equal to the prediction, leaving out a matching answer leaves k - 1, another k:
# mean = (k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10; k = 2: 0.6, k = 3: 0.9, k >= 4: 1.

VQAV2 = [  # prediction, answers, lmms_eval, lenient
    ("red,white", ["red white"] * 3 + ["blue"] * 7, 0.9, 0.0),  # VQAv2 spaces the comma, TextVQA's step deletes it
    ("theres", ["there's"] * TEN, 1.0, 0.0),  # "theres" -> "there's"; TextVQA's step makes "there 's" of the answer
    ("Two", ["2"] * TEN, 1.0, 1.0),  # capitals, number words
    ("A dog", ["dog"] * 2 + ["cat"] * 8, 0.6, 0.6),  # articles
    ("There are two dogs.", ["2"] * TEN, 0.0, 0.0),  # a sentence around the answer
    ("1,000", ["1000"] * TEN, 1.0, 1.0),  # a comma between digits deletes every mark
    ("yes?", ["yes"] * TEN, 1.0, 1.0),
    ("dont", ["don't"] * 4 + ["no"] * 6, 1.0, 1.0),  # contractions
    ("yes", ["yes"], 0.0, 1.0),  # one answer: no other answer to agree with (lenient: exact match)
    ("", ["yes"] * TEN, 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "answers", "lmms_eval", "lenient"), VQAV2)
def test_vqav2(prediction: str, answers: list[str], lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "answers": answers}
    assert accuracy("vqav2", "lmms_eval", record) == pytest.approx(lmms_eval)
    assert accuracy("vqav2", "lenient", record) == pytest.approx(lenient)


def test_vqav2_and_textvqa_normalizations_differ_where_lmms_eval_s_do() -> None:
    assert normalize_vqav2_answer("red,white") == "red white" and normalize_vqa_answer("red,white") == "redwhite"
    assert normalize_vqav2_answer("there's") == "there's" and normalize_vqa_answer("there's") == "there 's"
    assert normalize_vqav2_answer("Is it 1,000?") == "is it 1000" == normalize_vqa_answer("Is it 1,000?")
    assert normalize_vqav2_answer("The Coca-Cola.\n") == "coca cola" == normalize_vqa_answer("The Coca-Cola.\n")


TEXTVQA = [  # prediction, answers, lmms_eval, lenient
    ("red,white", ["redwhite"] * 3 + ["blue"] * 7, 0.9, 0.9),
    ("Dakota", ["dakota"] * TEN, 1.0, 1.0),
    ("The Coca-Cola", ["coca cola"] * TEN, 1.0, 1.0),
    ("three", ["3"] * 2 + ["x"] * 8, 0.6, 0.6),
    ("stop ASSISTANT: go", ["stop"] * TEN, 1.0, 0.0),  # textvqa's until: the answer ends at "ASSISTANT:"
    ("It says stop.", ["stop"] * TEN, 0.0, 0.0),
    ("yes", ["yes"], 0.0, 1.0),
    ("", ["stop"] * TEN, 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "answers", "lmms_eval", "lenient"), TEXTVQA)
def test_textvqa(prediction: str, answers: list[str], lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "answers": answers}
    assert accuracy("textvqa", "lmms_eval", record) == pytest.approx(lmms_eval)
    assert accuracy("textvqa", "lenient", record) == pytest.approx(lenient)


# ---------------------------------------------------------------------------------------------------------------------
# POPE: pope/utils.py (only an exact "yes"/"no" reads; the pope task pools every split)
# ---------------------------------------------------------------------------------------------------------------------

POPE = [  # category, answer, prediction; lmms-eval's reading | the lenient (MME) reading
    ("adversarial", "yes", "Yes"),  # yes | yes
    ("adversarial", "no", "No."),  # unreadable | no
    ("adversarial", "yes", "yes, there is a dog"),  # unreadable | yes
    ("adversarial", "no", "There is no dog."),  # unreadable | other
    ("popular", "yes", " no "),  # no | no
    ("popular", "no", "YES"),  # yes | yes
    ("popular", "yes", "Not sure"),  # unreadable | no ("no" in the first four characters)
    ("popular", "no", "no"),  # no | no
    ("random", "yes", "y"),  # unreadable | yes
    ("random", "no", "n"),  # unreadable | no
    ("random", "yes", "yes"),  # yes | yes
    ("random", "no", ""),  # unreadable | other
]


def pope_records() -> list[dict[str, Any]]:
    return [{"category": c, "answer": a, "prediction": p} for c, a, p in POPE]


def test_pope_lmms_eval_pools_every_split_for_the_headline() -> None:
    scores = benchmark("pope", "lmms_eval").score(pope_records())
    # Right: 3 of 12. TP 2 (adversarial, random), FP 1 ("YES"), FN 1 (" no "): the 7 unreadable answers count in
    # accuracy only, and the 4 to "yes" questions leave recall's denominator.
    expected = {
        "accuracy": 3 / 12,
        "precision": 2 / 3,
        "recall": 2 / 3,
        "f1": 2 / 3,
        "predicted_yes_ratio": 3 / 12,
        "lmms_eval_yes_ratio": 6 / 12,
        "unreadable": 7.0,
        "adversarial/accuracy": 1 / 4,
        "adversarial/precision": 1.0,
        "adversarial/recall": 1.0,
        "adversarial/f1": 1.0,
        "adversarial/unreadable": 3.0,
        "popular/accuracy": 1 / 4,
        "popular/precision": 0.0,
        "popular/recall": 0.0,
        "popular/f1": 0.0,
        "popular/predicted_yes_ratio": 1 / 4,
        "random/accuracy": 1 / 4,
        "random/f1": 1.0,
        "random/unreadable": 3.0,
        "random/lmms_eval_yes_ratio": 2 / 4,
    }
    assert {key: scores[key] for key in expected} == pytest.approx(expected)
    assert benchmark("pope", "lmms_eval").primary_metric == "f1"


def test_pope_lenient_stays_per_split_means_of_the_mme_reading() -> None:
    scores = benchmark("pope", "lenient").score(pope_records())
    expected = {
        "adversarial/accuracy": 3 / 4,
        "adversarial/f1": 1.0,
        "adversarial/yes_ratio": 2 / 4,
        "popular/accuracy": 1 / 4,
        "popular/precision": 0.0,
        "popular/f1": 0.0,
        "popular/yes_ratio": 1 / 4,
        "random/accuracy": 3 / 4,
        "random/recall": 1.0,
        "random/f1": 1.0,
        "accuracy": 7 / 12,
        "f1": 2 / 3,
    }
    assert {key: scores[key] for key in expected} == pytest.approx(expected)
    assert "unreadable" not in scores and "precision" not in scores


# ---------------------------------------------------------------------------------------------------------------------
# MME: mme/utils.py (Otter's parse) in both protocols
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scoring", ["lmms_eval", "lenient"])  # llava: MME's own eval tool, not in LLaVA's repository
def test_mme(scoring: str) -> None:
    records = [
        {"question_id": "1.jpg", "category": "existence", "answer": "Yes", "prediction": "Yes, there is."},
        {"question_id": "1.jpg", "category": "existence", "answer": "No", "prediction": "Not really"},
        {"question_id": "2.jpg", "category": "existence", "answer": "Yes", "prediction": "Maybe"},  # other
        {"question_id": "2.jpg", "category": "existence", "answer": "No", "prediction": "N"},
    ]
    scores = benchmark("mme", scoring).score(records)
    assert (scores["existence/acc"], scores["existence/acc_plus"], scores["mme_perception"]) == (75.0, 50.0, 125.0)


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice: ScienceQA-IMG, SEED-Bench, AI2D (each its own reading), then MMBench
# ---------------------------------------------------------------------------------------------------------------------

SCIENCEQA = [  # prediction, lmms_eval, lenient; options grass, fox, rabbit; answer B (scienceqa/utils.py)
    ("B", 1.0, 1.0),
    ("b", 1.0, 1.0),
    ("B.", 1.0, 1.0),
    ("B. fox", 1.0, 1.0),
    ("(B)", 0.0, 1.0),
    ("B)", 0.0, 1.0),
    ("fox", 0.0, 1.0),
    ("The answer is B.", 0.0, 1.0),
    ("b. fox", 0.0, 1.0),  # lower-case: not "X."; lenient finds the option's text
    ("I think it is B", 0.0, 1.0),
    ("A", 0.0, 0.0),
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "lmms_eval", "lenient"), SCIENCEQA)
def test_scienceqa(prediction: str, lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "choices": ["grass", "fox", "rabbit"], "answer": "B"}
    assert accuracy("scienceqa_img", "lmms_eval", record) == lmms_eval
    assert accuracy("scienceqa_img", "lenient", record) == lenient


SEEDBENCH = [  # prediction, lmms_eval, lenient; options One..Four, answer B (seedbench/utils.py: first character)
    ("B", 1.0, 1.0),
    ("b", 1.0, 1.0),
    ("B.", 1.0, 1.0),
    ("(B)", 0.0, 1.0),
    ("B) Two", 1.0, 1.0),
    ("b) two", 1.0, 1.0),
    ("Two", 0.0, 1.0),
    ("Bird", 1.0, 0.0),
    ("The answer is B", 0.0, 1.0),
    ("B ASSISTANT: C", 1.0, 0.0),  # seedbench's until cuts at "ASSISTANT:"; lenient sees two letters
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "lmms_eval", "lenient"), SEEDBENCH)
def test_seedbench(prediction: str, lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "choices": ["One", "Two", "Three", "Four"], "answer": "B"}
    assert accuracy("seedbench", "lmms_eval", record) == lmms_eval
    assert accuracy("seedbench", "lenient", record) == lenient


AI2D = [  # prediction, lmms_eval, lenient; options grass, fox, owl, snake; answer B (ai2d/utils.py, ai2d.yaml)
    ("B", 1.0, 1.0),
    ("b", 1.0, 1.0),
    ("B.", 1.0, 1.0),
    ("b.", 1.0, 1.0),
    ("(B)", 1.0, 1.0),
    ("B)", 1.0, 1.0),
    ("B. fox", 1.0, 1.0),
    ("B a fox", 0.0, 1.0),
    ("fox", 0.0, 1.0),
    ("The answer is B", 0.0, 1.0),
    ("C", 0.0, 0.0),
    ("", 0.0, 0.0),
]


@pytest.mark.parametrize(("prediction", "lmms_eval", "lenient"), AI2D)
def test_ai2d(prediction: str, lmms_eval: float, lenient: float) -> None:
    record = {"prediction": prediction, "choices": ["grass", "fox", "owl", "snake"], "answer": "B"}
    assert accuracy("ai2d", "lmms_eval", record) == lmms_eval
    assert accuracy("ai2d", "lenient", record) == lenient


# MMBench (mmbench/mmbench_evals.py can_infer_option / can_infer_text, then _task_utils/mcq_extract.py as
# mmbench_en_dev_static does); options cat, dog, bird, fish; answer B.
MMBENCH = [  # prediction, lmms_eval right, judge needed, unreadable, lenient right
    ("B", 1.0, 0, 0, 1.0),
    ("(B)", 1.0, 0, 0, 1.0),
    ("B.", 1.0, 0, 0, 1.0),
    ("dog", 1.0, 0, 0, 1.0),  # the option's text
    ("The answer is B", 1.0, 0, 0, 1.0),
    ("A dog is shown", 1.0, 0, 0, 1.0),  # "A" in a four-word answer is an article: the text "dog" decides
    ("I choose (B) because the dog barks", 1.0, 0, 0, 1.0),
    ("Answer: B", 1.0, 0, 0, 1.0),
    ("B ASSISTANT: C", 1.0, 0, 0, 0.0),  # the template's until
    ("b", 0.0, 1, 1, 1.0),  # lower-case letters never read
    ("It is B or C", 0.0, 1, 0, 0.0),  # two letters; the static extractor takes the final C
    ("cat or dog", 0.0, 1, 1, 0.0),  # two options' texts
    ("E", 0.0, 0, 0, 0.0),  # can_infer_option reads A..E whatever the options
    ("A", 0.0, 0, 0, 0.0),
    ("", 0.0, 1, 1, 0.0),
]


def mmbench_record(prediction: str, index: int = 0, answer: str = "B") -> dict[str, Any]:
    return {"index": index, "prediction": prediction, "choices": ["cat", "dog", "bird", "fish"], "answer": answer}


@pytest.mark.parametrize(("prediction", "lmms_eval", "judge", "unreadable", "lenient"), MMBENCH)
def test_mmbench(prediction: str, lmms_eval: float, judge: int, unreadable: int, lenient: float) -> None:
    scores = benchmark("mmbench", "lmms_eval", circular=False).score([mmbench_record(prediction)])
    assert scores == {"accuracy": lmms_eval, "judge_needed": float(judge), "unreadable": float(unreadable)}
    assert accuracy("mmbench", "lenient", mmbench_record(prediction), circular=False) == lenient


def test_mmbench_counts_over_a_set_and_circular_eval_by_default() -> None:
    records = [mmbench_record(prediction, index=i) for i, (prediction, *_) in enumerate(MMBENCH)]
    scores = benchmark("mmbench", "lmms_eval", circular=False).score(records)
    assert scores == {"accuracy": 9 / 15, "judge_needed": 4.0, "unreadable": 3.0}
    # Question 0: both variants right; question 1: its rotated variant is unreadable, so the question is wrong.
    variants = [
        mmbench_record("B", index=0, answer="B"),
        mmbench_record("(C)", index=0, answer="C"),
        mmbench_record("B", index=1, answer="B"),
        mmbench_record("maybe", index=1, answer="C"),
    ]
    default = benchmark("mmbench", "lmms_eval")
    assert default.circular and default.primary_metric == "circular_accuracy"
    assert default.score(variants) == {"circular_accuracy": 0.5, "judge_needed": 1.0, "unreadable": 1.0}
    assert not benchmark("mmbench", "lenient").circular


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", "B"),
        ("B, C", "C"),  # "B," is not a bare letter, "C" is the one bare one
        ("A cat is on the mat", None),  # an article, not option A
        ("A", "A"),
        ("(A) or (B)", None),  # two letters in the same form
        ("Option E.", "E"),
        ("b", None),
    ],
)
def test_mmbench_can_infer_option(answer: str, expected: str | None) -> None:
    assert mmbench_can_infer_option(answer) == expected


def test_mmbench_can_infer_text_is_a_plain_substring_test() -> None:
    options = ["red", "red and blue", "cat"]
    assert mmbench_can_infer_text("It is a CAT.", options) == "C"
    assert mmbench_can_infer_text("red and blue", options) is None  # "red" occurs too
    assert mmbench_can_infer_text("concatenate", options) == "C"  # no word boundaries


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The correct answer is (B).", "B"),  # the phrase (7) beats the brackets (6)
        ("I pick C", "C"),  # ends with a letter (9)
        ("A cat", "A"),  # starts with a letter (10)
        ("Both B. and D.", "D"),  # the final period is stripped: D ends the text
        ("None", None),
        ("", None),
        ("xBx", "B"),  # no candidate in any form: any occurrence
    ],
)
def test_mcq_extract_letter(response: str, expected: str | None) -> None:
    assert mcq_extract_letter(response, "ABCD") == expected


# ---------------------------------------------------------------------------------------------------------------------
# The llava protocol: llava/eval/eval_pope.py, eval_science_qa.py, eval_textvqa.py, scripts/convert_seed_for_submission
# ---------------------------------------------------------------------------------------------------------------------

# eval_pope.py on POPE's predictions above: "no" only with the word "No", "no" or "not" in the first sentence.
LLAVA_POPE_READINGS = ["yes", "no", "yes", "no", "no", "yes", "yes", "no", "yes", "yes", "yes", "yes"]


def test_llava_pope_reading() -> None:
    assert [llava_pope_reading(prediction.strip()) for _, _, prediction in POPE] == LLAVA_POPE_READINGS
    assert llava_pope_reading("Yes. There is no cat.") == "yes"  # only the first sentence counts
    assert llava_pope_reading("No,there is none") == "yes"  # "Nothere" once the comma is gone


def test_pope_llava_per_split_and_their_means() -> None:
    scores = benchmark("pope", "llava").score(pope_records())
    # adversarial: TP TN TP TN; popular: FN FP TP ("Not sure") TN; random: TP FP ("n") TP FP ("").
    expected = {
        "adversarial/accuracy": 1.0,
        "adversarial/f1": 1.0,
        "adversarial/yes_ratio": 2 / 4,
        "popular/accuracy": 2 / 4,
        "popular/precision": 1 / 2,
        "popular/recall": 1 / 2,
        "popular/f1": 1 / 2,
        "random/accuracy": 2 / 4,
        "random/precision": 2 / 4,
        "random/recall": 1.0,
        "random/f1": 2 / 3,
        "random/yes_ratio": 1.0,
        "accuracy": 2 / 3,
        "f1": (1 + 1 / 2 + 2 / 3) / 3,
    }
    assert {key: scores[key] for key in expected} == pytest.approx(expected)


LLAVA_SCIENCEQA = {  # prediction -> right (answer B of three options); see SCIENCEQA for the same predictions
    "B": True,
    "b": False,
    "B.": False,  # "X. " needs the space
    "B. fox": True,
    "(B)": False,
    "B)": False,
    "fox": False,
    "The answer is B.": True,
    "b. fox": False,
    "I think it is B": False,
    "A": False,
    "": False,
}


def test_scienceqa_llava() -> None:
    assert set(LLAVA_SCIENCEQA) == {prediction for prediction, _, _ in SCIENCEQA}
    for prediction, right in LLAVA_SCIENCEQA.items():
        record = {"prediction": prediction, "choices": ["grass", "fox", "rabbit"], "answer": "B"}
        assert accuracy("scienceqa_img", "llava", record) == float(right), prediction
    assert llava_scienceqa_letter("The answer is D.", 3) is None  # beyond the options
    assert llava_scienceqa_letter("The answer is B. The answer is C.", 3) is None  # two answers
    assert llava_scienceqa_letter("AB", 3) is None  # not one of the option letters


def test_seedbench_llava_needs_the_bare_letter() -> None:
    rights = [
        accuracy("seedbench", "llava", {"prediction": p, "choices": ["One", "Two", "Three", "Four"], "answer": "B"})
        for p, _, _ in SEEDBENCH
    ]
    assert rights == [1.0] + [0.0] * (len(SEEDBENCH) - 1)  # only "B"; no stop string cuts "B ASSISTANT: C"


def test_textvqa_llava_is_the_m4c_evaluator_without_stop_strings() -> None:
    cut = {"prediction": "stop ASSISTANT: go", "answers": ["stop"] * TEN}
    assert accuracy("textvqa", "llava", cut) == 0.0
    assert accuracy("textvqa", "llava", {"prediction": "red,white", "answers": ["redwhite"] * 3 + ["x"] * 7}) == (
        pytest.approx(0.9)
    )
    assert benchmark("textvqa", "llava").ocr and not benchmark("textvqa", "lmms_eval").ocr
