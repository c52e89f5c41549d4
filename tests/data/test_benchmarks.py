"""Benchmarks: every registered config builds; hub loaders read tiny local copies with the real schemas and give
lmms-eval's exact prompts and hand-computed scores; easy-VQA is checked on the real package data; a dataset that is
not cached fails fast."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import easy_vqa
import huggingface_hub
import pytest
from datasets import Dataset, DatasetDict, Features, Image, Value
from omegaconf import DictConfig, OmegaConf
from PIL import Image as PILImage

from fopru.components import CONFIG_DIR, build, choices, load
from fopru.data import loading
from fopru.data.base import CONTRACT_COLUMNS, Benchmark
from fopru.data.scoring import SCORING_PROTOCOLS
from fopru.errors import ConfigError

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
NAMES = choices("data")
HUB = [name for name in NAMES if "dataset" in OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")]


@pytest.fixture(autouse=True)
def empty_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh datasets cache: local parquet copies leave nothing in ~/.cache, and no hub dataset is cached."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets-cache")))


def benchmark(name: str, **overrides: Any) -> Benchmark:
    """Build conf/data/<name>.yaml as a composed run would (${seed} from train_eval.yaml), with overrides."""
    root = OmegaConf.load(CONFIG_DIR / "train_eval.yaml")
    assert isinstance(root, DictConfig)
    root.pop("defaults", None)
    root["data"] = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml"), overrides)
    return build("data", root["data"], Benchmark)


def color(index: int) -> tuple[int, int, int]:
    return (40 * index % 256, 255 - 30 * index % 256, 90)


def picture(index: int) -> PILImage.Image:
    """A tiny image whose colour identifies it; RGBA, to check that loading converts to RGB."""
    return PILImage.new("RGBA", (4, 3), (*color(index), 255))


def table(rows: list[dict[str, Any]], features: dict[str, Any]) -> Dataset:
    return Dataset.from_list(rows, features=Features(features))


def parquet_snapshot(root: Path, layout: dict[str, Dataset]) -> None:
    """Files laid out as in a hub snapshot: {"data/test-00000-of-00001.parquet": dataset, ...}."""
    for relative, dataset in layout.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(root / relative))


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures: a few rows per benchmark, with the columns and types of the lmms-lab datasets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Fixture:
    """A local copy of a hub benchmark and what loading and scoring it must give."""

    write: Callable[[Path], None]  # writes the copy into the folder it is given
    rows: int  # samples that load() returns
    prompt: tuple[str, str]  # (sample_id, its exact lmms-eval prompt)
    predictions: dict[str, str]  # sample_id -> prediction
    expected: dict[str, float]  # hand-computed lmms_eval scores (a subset of score()'s keys)
    overrides: dict[str, Any] = field(default_factory=dict)
    lenient: dict[str, float] | None = None  # hand-computed lenient scores; None: the same as expected
    image_of: dict[str, int] = field(default_factory=dict)  # sample_id -> picture index it must show


def write_pope(root: Path) -> None:
    features = {
        "id": Value("string"),
        "question_id": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "image_source": Value("string"),
        "image": Image(),
        "category": Value("string"),
    }
    questions = [
        ("adversarial", "1", "Is there a dog in the image?", "yes"),
        ("adversarial", "2", "Is there a cat in the image?", "no"),
        ("popular", "1", "Is there a car in the image?", "yes"),
        ("popular", "2", "Is there a tree in the image? ", "no"),
        ("random", "1", "Is there a bus in the image?", "yes"),
        ("random", "2", "Is there a kite in the image?", "no"),
    ]
    rows = [
        {
            "id": str(i),
            "question_id": question_id,
            "question": question,
            "answer": answer,
            "image_source": f"COCO_val2014_{i:012d}",
            "image": picture(i),
            "category": category,
        }
        for i, (category, question_id, question, answer) in enumerate(questions)
    ]
    parquet_snapshot(root, {"data/test-00000-of-00001.parquet": table(rows, features)})


def write_mme(root: Path) -> None:
    features = {
        "question_id": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "category": Value("string"),
    }
    questions = [
        ("code_reasoning/0020.png", "Is a c++ code shown in the picture? Please answer yes or no.", "No"),
        ("code_reasoning/0020.png", "Is a python code shown in the picture? Please answer yes or no.", "Yes"),
        ("existence/000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
        ("existence/000000006040.jpg", "Is there a bed in this image? Please answer yes or no.", "No"),
    ]
    rows = [
        {"question_id": qid, "image": picture(i), "question": q, "answer": a, "category": qid.split("/")[0]}
        for i, (qid, q, a) in enumerate(questions)
    ]
    table(rows, features).save_to_disk(str(root))


def write_gqa(root: Path) -> None:
    instructions = {
        "id": Value("string"),
        "imageId": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
        "fullAnswer": Value("string"),
        "isBalanced": Value("bool"),
    }
    questions = [
        ("201307251", "n161313", "Is it overcast?", "no"),
        ("201640614", "n235859", "Who is wearing a dress?", "woman"),
        ("202225914", "n161313", "Which side is the car on?", "left"),
    ]
    rows = [
        {"id": i, "imageId": image, "question": q, "answer": a, "fullAnswer": f"The answer is {a}.", "isBalanced": True}
        for i, image, q, a in questions
    ]
    # The images config lists images in another order than the questions use them.
    images = [{"id": "n235859", "image": picture(7)}, {"id": "n161313", "image": picture(3)}]
    parquet_snapshot(
        root,
        {
            "testdev_balanced_instructions/testdev-00000-of-00001.parquet": table(rows, instructions),
            "testdev_balanced_images/testdev-00000-of-00001.parquet": table(
                images, {"id": Value("string"), "image": Image()}
            ),
        },
    )


def write_textvqa(root: Path) -> None:
    strings = datasets.Sequence(Value("string"))
    features = {
        "image_id": Value("string"),
        "question_id": Value("int32"),
        "question": Value("string"),
        "question_tokens": strings,
        "image": Image(),
        "image_width": Value("int32"),
        "image_height": Value("int32"),
        "flickr_original_url": Value("string"),
        "flickr_300k_url": Value("string"),
        "answers": strings,
        "image_classes": strings,
        "set_name": Value("string"),
        "ocr_tokens": strings,
    }
    questions = [
        (34602, "what is the brand of this camera?", ["dakota"] * 10, ["dakota", "digital"]),
        (34603, "What does the TV say?", ["bread"] * 2 + ["toast"] * 8, ["nous", "tv"]),
    ]
    rows = [
        {
            "image_id": f"{i:016x}",
            "question_id": qid,
            "question": q,
            "question_tokens": q.split(),
            "image": picture(i),
            "image_width": 4,
            "image_height": 3,
            "flickr_original_url": "",
            "flickr_300k_url": "",
            "answers": answers,
            "image_classes": ["Camera"],
            "set_name": "val",
            "ocr_tokens": ocr,
        }
        for i, (qid, q, answers, ocr) in enumerate(questions)
    ]
    train = [dict(rows[0], question_id=1)]
    DatasetDict({"train": table(train, features), "validation": table(rows, features)}).save_to_disk(str(root))


def write_vqav2(root: Path) -> None:
    answer = {"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}
    features = {
        "question_type": Value("string"),
        "multiple_choice_answer": Value("string"),
        "answers": [answer],
        "image_id": Value("int64"),
        "answer_type": Value("string"),
        "question_id": Value("int64"),
        "question": Value("string"),
        "image": Image(),
    }
    questions = [(262148000, "How many dogs are there?", "2"), (262148001, "Is the man happy?", "yes")]
    rows = [
        {
            "question_type": "how many",
            "multiple_choice_answer": a,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
            "image_id": 262148,
            "answer_type": "other",
            "question_id": qid,
            "question": q,
            "image": picture(i),
        }
        for i, (qid, q, a) in enumerate(questions)
    ]
    parquet_snapshot(root, {"data/validation-00000-of-00002.parquet": table(rows, features)})


def write_scienceqa(root: Path) -> None:
    text = Value("string")
    features = {
        "image": Image(),
        "question": text,
        "choices": datasets.Sequence(text),
        "answer": Value("int8"),
        "hint": text,
        "task": text,
        "grade": text,
        "subject": text,
        "topic": text,
        "category": text,
        "skill": text,
        "lecture": text,
        "solution": text,
    }
    questions = [
        ("Which organism is a producer?", ["grass", "fox", "rabbit"], 0, "The diagram shows a food web."),
        ("Which is a compound?", ["helium", "water"], 1, ""),
    ]
    rows = [
        {
            "image": picture(i),
            "question": q,
            "choices": c,
            "answer": a,
            "hint": h,
            **{key: "" for key in ("task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")},
        }
        for i, (q, c, a, h) in enumerate(questions)
    ]
    DatasetDict({"test": table(rows, features)}).save_to_disk(str(root / "ScienceQA-IMG"))


def write_mmbench(root: Path) -> None:
    text = Value("string")
    features = {
        "index": Value("int64"),
        "question": text,
        "hint": text,
        "A": text,
        "B": text,
        "C": text,
        "D": text,
        "answer": text,
        "category": text,
        "image": Image(),
        "source": text,
        "L2-category": text,
        "comment": text,
        "split": text,
    }
    questions: list[tuple[int, str | None, str, list[str | None], str]] = [
        # originals and their circular variants (index + k * 1e6, options rotated)
        (0, "The passage.", "Which animal is shown?", ["cat", "dog", "bird", "fish"], "A"),
        (1, None, "What color is the sky?", ["blue", "green", None, None], "A"),
        (1000000, "The passage.", "Which animal is shown?", ["dog", "bird", "fish", "cat"], "D"),
        (1000001, "nan", "What color is the sky?", ["green", "blue", None, None], "B"),
    ]
    rows = [
        {
            "index": index,
            "question": question,
            "hint": hint,
            **dict(zip("ABCD", options, strict=True)),
            "answer": answer,
            "category": "image_scene",
            "image": picture(index % 10),
            "source": "scienceqa",
            "L2-category": "coarse_perception",
            "comment": None,
            "split": "dev",
        }
        for index, hint, question, options, answer in questions
    ]
    parquet_snapshot(root, {"en/dev-00000-of-00001.parquet": table(rows, features)})


def write_seedbench(root: Path) -> None:
    text = Value("string")
    features = {
        "answer": text,
        "choice_a": text,
        "choice_b": text,
        "choice_c": text,
        "choice_d": text,
        "data_id": text,
        "data_type": text,
        "question": text,
        "question_id": text,
        "question_type_id": Value("int16"),
        "image": datasets.Sequence(Image()),
        "segment": datasets.Sequence(Value("int64")),
    }
    questions = [
        ("101669", "image", "How many towels are in the image?", ["One", "Two", "Three", "Four"], "B", 1),
        ("v1", "video", "What is the action?", ["Run", "Sit", "Jump", "Swim"], "A", 3),
        ("101670", "image", "What color is the car?", ["Red", "Blue", "Green", "Black"], "D", 1),
    ]
    rows = [
        {
            "answer": answer,
            **dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), options, strict=True)),
            "data_id": f"{qid}.jpg",
            "data_type": kind,
            "question": question,
            "question_id": qid,
            "question_type_id": 2,
            "image": [picture(i * 3 + frame) for frame in range(frames)],
            "segment": [] if kind == "image" else [0, 8],
        }
        for i, (qid, kind, question, options, answer, frames) in enumerate(questions)
    ]
    table(rows, features).save_to_disk(str(root))


def write_ai2d(root: Path) -> None:
    features = {
        "question": Value("string"),
        "options": datasets.Sequence(Value("string")),
        "answer": Value("string"),
        "image": Image(),
    }
    questions = [
        ("Which of these is a producer?", ["grass", "fox", "owl", "snake"], "0"),
        ("Which stage comes last?", ["egg", "larva", "pupa", "adult"], "3"),
    ]
    rows = [{"question": q, "options": o, "answer": a, "image": picture(i)} for i, (q, o, a) in enumerate(questions)]
    parquet_snapshot(root, {"data/test-00000-of-00001.parquet": table(rows, features)})


FIXTURES: dict[str, Fixture] = {
    "pope": Fixture(
        write_pope,
        rows=6,
        prompt=("popular/2", f"Is there a tree in the image?{SHORT}"),
        predictions={
            "adversarial/1": "Yes",  # TP
            "adversarial/2": "yes",  # FP
            "popular/1": "No",  # FN
            "popular/2": "no",  # TN
            "random/1": "Yes, there is.",  # TP
            "random/2": "No.",  # TN
        },
        # lmms-eval reads only an exact "yes"/"no": "Yes, there is." and "No." are unreadable. Pooled: TP 1, FP 1,
        # FN 1 (the unreadable answer to a yes question leaves recall's denominator), 2 of 6 right.
        expected={
            "accuracy": 1 / 3,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "predicted_yes_ratio": 1 / 3,
            "lmms_eval_yes_ratio": 0.5,
            "unreadable": 2.0,
            "adversarial/accuracy": 0.5,
            "adversarial/recall": 1.0,
            "adversarial/f1": 2 / 3,
            "random/accuracy": 0.0,
            "random/recall": 0.0,
            "random/f1": 0.0,
            "random/unreadable": 2.0,
        },
        lenient={
            "adversarial/accuracy": 0.5,
            "adversarial/precision": 0.5,
            "adversarial/recall": 1.0,
            "adversarial/f1": 2 / 3,
            "adversarial/yes_ratio": 1.0,
            "popular/accuracy": 0.5,
            "popular/precision": 0.0,
            "popular/recall": 0.0,
            "popular/f1": 0.0,
            "popular/yes_ratio": 0.0,
            "random/accuracy": 1.0,
            "random/f1": 1.0,
            "random/yes_ratio": 0.5,
            "accuracy": 2 / 3,
            "f1": 5 / 9,
        },
        image_of={"popular/2": 3},
    ),
    "mme": Fixture(
        write_mme,
        rows=4,
        prompt=("code_reasoning/0020.png#0", f"Is a c++ code shown in the picture?{SHORT}"),
        predictions={
            "code_reasoning/0020.png#0": "No",
            "code_reasoning/0020.png#1": "Yes",
            "existence/000000006040.jpg#2": "Yes",
            "existence/000000006040.jpg#3": "Yes, there is a bed.",
        },
        expected={
            "code_reasoning/score": 200.0,
            "existence/acc": 50.0,
            "existence/acc_plus": 0.0,
            "mme_perception": 50.0,
            "mme_cognition": 200.0,
        },
    ),
    "gqa": Fixture(
        write_gqa,
        rows=3,
        prompt=("202225914", f"Which side is the car on?{SHORT}"),
        predictions={"201307251": "No.", "201640614": "man", "202225914": "Left"},
        expected={"accuracy": 2 / 3},
        image_of={"201307251": 3, "201640614": 7, "202225914": 3},
    ),
    "textvqa": Fixture(
        write_textvqa,
        rows=2,
        prompt=("34603", f"What does the tv say?{SHORT}"),  # str.capitalize() lower-cases "TV"
        predictions={"34602": "Dakota", "34603": "bread"},
        expected={"accuracy": (1.0 + 0.6) / 2},  # "bread" is 2 of 10 answers: mean of 2 x 1/3 and 8 x 2/3
    ),
    "vqav2": Fixture(
        write_vqav2,
        rows=2,
        prompt=("262148000", f"How many dogs are there?{SHORT}"),
        predictions={"262148000": "Two", "262148001": "no"},
        expected={"accuracy": 0.5},
    ),
    "scienceqa_img": Fixture(
        write_scienceqa,
        rows=2,
        prompt=(
            "0",
            "Context: The diagram shows a food web.\nWhich organism is a producer?\nA. grass\nB. fox\nC. rabbit"
            f"{LETTER}",
        ),
        predictions={"0": "A", "1": "A. helium"},
        expected={"accuracy": 0.5},
    ),
    "mmbench": Fixture(
        write_mmbench,
        rows=2,  # circular: false keeps the originals only
        prompt=(
            "0",
            "The passage. Which animal is shown? There are several options:\nA. cat\nB. dog\nC. bird\nD. fish\n"
            f"{LETTER}",
        ),
        predictions={"0": "A", "1": "B"},
        expected={"accuracy": 0.5, "judge_needed": 0.0, "unreadable": 0.0},
        overrides={"circular": False},
        lenient={"accuracy": 0.5},
    ),
    "seedbench": Fixture(
        write_seedbench,
        rows=2,  # the video question is dropped
        prompt=("101669", f"How many towels are in the image?\nA. One\nB. Two\nC. Three\nD. Four{LETTER}"),
        predictions={"101669": "B", "101670": "The answer is C"},
        expected={"accuracy": 0.5},
        image_of={"101669": 0, "101670": 6},
    ),
    "ai2d": Fixture(
        write_ai2d,
        rows=2,
        prompt=("0", f"Which of these is a producer?\nA. grass\nB. fox\nC. owl\nD. snake{LETTER}"),
        predictions={"0": "(A)", "1": "C"},
        expected={"accuracy": 0.5},
    ),
}


def local_copy(name: str, folder: Path) -> Benchmark:
    fixture = FIXTURES[name]
    fixture.write(folder)
    return benchmark(name, dataset=str(folder), **fixture.overrides)


def records_of(loaded: Dataset, predictions: dict[str, str]) -> list[dict[str, Any]]:
    return [dict(row, prediction=predictions[row["sample_id"]]) for row in loaded.remove_columns("image").to_list()]


# ---------------------------------------------------------------------------------------------------------------------
# Every registered benchmark
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_config_builds_a_benchmark(name: str) -> None:
    node = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    assert node.limit is None, "a registered benchmark evaluates all samples unless a run sets limit"
    built = benchmark(name)
    assert isinstance(built, Benchmark)
    assert built.scoring == "lmms_eval", "the default scoring follows lmms-eval"
    for scoring in built.GENERATION:
        assert scoring in SCORING_PROTOCOLS and isinstance(benchmark(name, scoring=scoring).max_new_tokens, int)
    with pytest.raises(ConfigError, match=r"scoring='lmms-eval'.*lmms_eval, lenient, llava"):
        benchmark(name, scoring="lmms-eval")
    assert built.seed == 0  # ${seed} of train_eval.yaml
    with pytest.raises(ConfigError, match="limit"):
        benchmark(name, limit=0)


def test_easyvqa_and_the_hub_benchmarks_are_all_registered() -> None:
    assert set(NAMES) == {"easyvqa", *FIXTURES}
    assert set(HUB) == set(FIXTURES)


@pytest.mark.parametrize("name", HUB)
def test_hub_benchmark_loads_its_local_copy_with_lmms_eval_prompts_and_scores(name: str, tmp_path: Path) -> None:
    assert name in FIXTURES, f"add a local fixture for {name} to FIXTURES"
    fixture = FIXTURES[name]
    loaded = local_copy(name, tmp_path / name).load()

    assert len(loaded) == fixture.rows
    assert set(CONTRACT_COLUMNS) <= set(loaded.column_names)
    assert isinstance(loaded.features["image"], Image)
    assert loaded.features["sample_id"] == Value("string") and loaded.features["prompt"] == Value("string")
    sample_ids = loaded["sample_id"]
    assert len(set(sample_ids)) == len(sample_ids) == len(fixture.predictions)

    row = loaded[sample_ids.index(fixture.prompt[0])]
    assert row["prompt"] == fixture.prompt[1]
    image = row["image"]
    assert isinstance(image, PILImage.Image) and image.mode == "RGB" and image.size == (4, 3)
    for sample_id, index in fixture.image_of.items():
        assert loaded[sample_ids.index(sample_id)]["image"].getpixel((0, 0)) == color(index)

    lenient = fixture.expected if fixture.lenient is None else fixture.lenient
    for scoring, expected in (("lmms_eval", fixture.expected), ("lenient", lenient)):
        scores = benchmark(name, scoring=scoring, **fixture.overrides).score(records_of(loaded, fixture.predictions))
        assert all(isinstance(value, float) for value in scores.values())
        for key, value in expected.items():
            assert scores[key] == pytest.approx(value), (scoring, key)


@pytest.mark.parametrize("name", HUB)
def test_limit_draws_the_same_rows_for_the_same_seed_in_original_order(name: str, tmp_path: Path) -> None:
    local_copy(name, tmp_path / name)
    everything = benchmark(name, dataset=str(tmp_path / name), **FIXTURES[name].overrides).load()["sample_id"]
    draws = [
        benchmark(name, dataset=str(tmp_path / name), limit=1, seed=seed, **FIXTURES[name].overrides).load()[
            "sample_id"
        ]
        for seed in (0, 0, 1)
    ]
    assert draws[0] == draws[1]
    for drawn in draws:
        assert 1 <= len(drawn) <= 2 and drawn == [s for s in everything if s in drawn]
    with pytest.raises(ConfigError, match="limit=99"):
        benchmark(name, dataset=str(tmp_path / name), limit=99).load()


@pytest.mark.parametrize("name", HUB)
def test_hub_dataset_missing_from_the_cache_fails_fast_naming_it(name: str) -> None:
    node = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        benchmark(name).load()
    assert time.monotonic() - start < 15
    assert node.dataset in str(error.value) and "cache" in str(error.value)


def test_unreachable_hub_without_offline_mode_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"'lmms-lab/POPE'.*could not be reached"):
        benchmark("pope").load()
    assert time.monotonic() - start < 15
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark-specific behaviour
# ---------------------------------------------------------------------------------------------------------------------


def test_mme_limit_keeps_both_questions_of_an_image(tmp_path: Path) -> None:
    FIXTURES["mme"].write(tmp_path)
    drawn = benchmark("mme", dataset=str(tmp_path), limit=1, seed=3).load()
    assert len(drawn) == 2 and len(set(drawn["question_id"])) == 1


def test_mmbench_circular_keeps_every_variant_and_scores_circular_eval(tmp_path: Path) -> None:
    FIXTURES["mmbench"].write(tmp_path)
    loaded = benchmark("mmbench", dataset=str(tmp_path), circular=True).load()
    assert loaded["sample_id"] == ["0", "1", "1000000", "1000001"]
    assert loaded["index"] == [0, 1, 0, 1]
    rotated = loaded[3]
    assert rotated["choices"] == ["green", "blue"] and rotated["answer"] == "B"
    assert rotated["prompt"] == f"What color is the sky? There are several options:\nA. green\nB. blue\n{LETTER}"
    # Question 0 is right in both variants, question 1 only in one: plain accuracy would be 3/4.
    predictions = {"0": "A", "1000000": "D", "1": "A", "1000001": "A"}
    scores = benchmark("mmbench", circular=True).score(records_of(loaded, predictions))
    assert scores == {"circular_accuracy": 0.5, "judge_needed": 0.0, "unreadable": 0.0}
    assert benchmark("mmbench", circular=True, scoring="lenient").score(records_of(loaded, predictions)) == {
        "circular_accuracy": 0.5
    }
    drawn = benchmark("mmbench", dataset=str(tmp_path), circular=True, limit=1, seed=0).load()
    assert len(drawn) == 2 and len(set(drawn["index"])) == 1


def test_mmbench_reports_circular_eval_by_default_under_lmms_eval_only(tmp_path: Path) -> None:
    FIXTURES["mmbench"].write(tmp_path)
    assert len(benchmark("mmbench", dataset=str(tmp_path)).load()) == 4  # mmbench_en_dev: every variant
    assert len(benchmark("mmbench", dataset=str(tmp_path), scoring="lenient").load()) == 2
    assert benchmark("mmbench").primary_metric == "circular_accuracy"
    assert benchmark("mmbench", scoring="lenient").primary_metric == "accuracy"


def test_textvqa_ocr_option_adds_lmms_eval_reference_tokens(tmp_path: Path) -> None:
    FIXTURES["textvqa"].write(tmp_path)
    loaded = benchmark("textvqa", dataset=str(tmp_path), ocr=True).load()
    assert loaded[1]["prompt"] == f"What does the tv say?\nReference OCR token: nous, tv{SHORT}"
    assert benchmark("textvqa", dataset=str(tmp_path), scoring="llava").load()[1]["prompt"] == loaded[1]["prompt"]
    assert benchmark("textvqa", dataset=str(tmp_path)).load()[1]["prompt"] == f"What does the tv say?{SHORT}"


def test_gqa_question_without_its_image_is_an_error_not_a_dropped_row(tmp_path: Path) -> None:
    FIXTURES["gqa"].write(tmp_path)
    only_one = table([{"id": "n235859", "image": picture(7)}], {"id": Value("string"), "image": Image()})
    only_one.to_parquet(str(tmp_path / "testdev_balanced_images/testdev-00000-of-00001.parquet"))
    with pytest.raises(ConfigError, match="n161313"):
        benchmark("gqa", dataset=str(tmp_path)).load()


def test_missing_column_or_split_is_a_clear_error(tmp_path: Path) -> None:
    FIXTURES["ai2d"].write(tmp_path)
    with pytest.raises(ConfigError, match="no split 'validation'"):
        benchmark("ai2d", dataset=str(tmp_path), split="validation").load()
    with pytest.raises(ConfigError, match="lacks column"):
        benchmark("vqav2", dataset=str(tmp_path), split="test").load()


# ---------------------------------------------------------------------------------------------------------------------
# easy-VQA, on the real package data
# ---------------------------------------------------------------------------------------------------------------------


def test_easyvqa_loads_every_real_question_quickly() -> None:
    start = time.monotonic()
    test = benchmark("easyvqa").load()
    assert time.monotonic() - start < 2
    train = benchmark("easyvqa", split="train").load()
    assert (len(test), len(train)) == (9673, 38575)
    assert set(test["answer"]) == set(easy_vqa.get_answers()) and len(set(test["answer"])) == 13
    assert len(set(test["image_id"])) == 1000
    questions, answers, image_ids = easy_vqa.get_test_questions()
    row = test[123]
    assert row["sample_id"] == "test-123" and row["answer"] == answers[123]
    assert row["prompt"] == f"{questions[123]}{SHORT}"
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    original = PILImage.open(easy_vqa.get_test_image_paths()[image_ids[123]]).convert("RGB")
    assert row["image"].tobytes() == original.tobytes()


def test_easyvqa_limit_is_a_seeded_subsample_in_original_order() -> None:
    first, again, other = (benchmark("easyvqa", limit=500, seed=seed).load() for seed in (0, 0, 1))
    assert first["sample_id"] == again["sample_id"] != other["sample_id"]
    positions = [int(sample_id.removeprefix("test-")) for sample_id in first["sample_id"]]
    assert len(positions) == 500 and positions == sorted(positions)
    with pytest.raises(ConfigError, match="split"):
        benchmark("easyvqa", split="validation")


def test_easyvqa_scores_exact_match_accuracy() -> None:
    loaded = benchmark("easyvqa", limit=4, seed=0).load()
    answers = loaded["answer"]
    predictions = {
        loaded[0]["sample_id"]: answers[0].upper() + ".",  # case and punctuation aside: right
        loaded[1]["sample_id"]: answers[1],
        loaded[2]["sample_id"]: "octagon",
        loaded[3]["sample_id"]: f"a {answers[3]}",  # an article is not stripped: wrong
    }
    assert benchmark("easyvqa").score(records_of(loaded, predictions)) == {"accuracy": 0.5}


@pytest.mark.parametrize("name", sorted(path.stem for path in (CONFIG_DIR / "data").glob("*.yaml")))
def test_the_primary_metric_is_a_key_of_the_scores(name: str) -> None:
    """Checked on the class contract: the primary metric names one of the keys ``score`` documents."""
    benchmark = load("data", name, Benchmark)
    expected = {"pope": "f1", "mme": "mme_perception", "mmbench": "circular_accuracy"}.get(name, "accuracy")
    assert benchmark.primary_metric == expected
