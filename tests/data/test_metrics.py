"""Official benchmark metrics on hand-made prediction sets whose scores are worked out by hand in the comments."""

import random
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fopru.data.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    exact_match,
    extract_choice,
    mmbench_circular_accuracy,
    mme_scores,
    multiple_choice_accuracy,
    normalize_vqa_answer,
    parse_yes_no,
    pope_metrics,
    vqa_accuracy,
)
from fopru.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------------
# VQA normalization and accuracy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),  # number words become digits, after lower-casing
        ("2", "2"),
        ("ten", "10"),
        ("none", "0"),  # the official table maps "none" too
        ("a dog", "dog"),  # articles go
        ("THE Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),  # a contraction missing its apostrophe is repaired
        ("don't", "don't"),
        ("couldnt've", "couldn't've"),
        ("couldntve", "couldntve"),  # only one missing apostrophe is repaired, as in the official table
        ("Im", "im"),  # the official "Im" entry is capitalised and never fires
        ("1,000", "1000"),  # commas are deleted before anything else
        ("2.5", "2.5"),  # a period before a digit is a decimal point and stays
        ("10.", "10"),
        ("Yes.", "yes"),  # punctuation at the end
        ("yes!", "yes"),
        ("what?", "what"),
        ("t-shirt", "t shirt"),  # a mark inside a word becomes a space ...
        ("well - done", "well done"),  # ... but is deleted when it touches a space
        ("3:00", "3:00"),  # ":" is not on the official list
        ("man's hat", "man 's hat"),  # possessives are split off
        ("red\nball\tgame", "red ball game"),
        ("  two   dogs  ", "2 dogs"),
        ("", ""),  # empty prediction
        (" \n\t ", ""),
        ("." * 40, "." * 8),  # the official code passes re.UNICODE (32) as the count: only 32 periods go
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


@given(st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " \n\t", max_size=40))
def test_normalized_answers_are_lower_case_single_spaced_and_free_of_listed_marks(raw: str) -> None:
    normalized = normalize_vqa_answer(raw)
    assert normalized == normalized.lower()
    assert normalized == " ".join(normalized.split())
    assert not set(normalized) & set(';/[]"{}()=+\\_-><@`,?!')
    assert not set(normalized.split()) & {"a", "an", "the", "one", "two", "none"}


# Ten answers of which k say "two" (or "2") and the rest "three". A matching answer left out leaves k - 1 matches among
# the other nine, a non-matching one leaves k; each subset scores min(1, matches / 3), and the ten are averaged:
#   k=0: 0                                        = 0
#   k=1: (1 * 0/3 + 9 * 1/3) / 10 = 3 / 10         = 0.3
#   k=2: (2 * 1/3 + 8 * 2/3) / 10 = 6 / 10         = 0.6
#   k=3: (3 * 2/3 + 7 * 1) / 10   = 9 / 10         = 0.9
#   k=4: (4 * 1 + 6 * 1) / 10                      = 1.0
@pytest.mark.parametrize(("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_on_ten_answers(matches: int, expected: float) -> None:
    answers = ["two", "2"] * (matches // 2) + ["Two."] * (matches % 2) + ["three"] * (10 - matches)
    assert vqa_accuracy("2", answers) == expected  # exact: no floating-point drift


def test_vqa_accuracy_normalizes_both_sides() -> None:
    # "A dog." and "dog" are one answer; "1,000" and "1000" another: 3 matches each -> 0.9
    assert vqa_accuracy("A dog.", ["dog"] * 3 + ["cat"] * 7) == 0.9
    assert vqa_accuracy("1,000", ["1000", "1000", "1,000", "100", "10", "1", "0", "zero", "5", "6"]) == 0.9
    assert vqa_accuracy("dont", ["don't"] * 10) == 1.0
    assert vqa_accuracy("", ["yes"] * 10) == 0.0  # empty prediction


def test_vqa_accuracy_with_few_answers() -> None:
    # three answers, all matching: every leave-one-out subset has 2 matches -> 2/3, as the official formula gives
    assert vqa_accuracy("yes", ["yes", "yes", "yes"]) == pytest.approx(2 / 3)
    # one answer has no leave-one-out subset: exact match of the normalized strings
    assert vqa_accuracy("Two", ["2"]) == 1.0
    assert vqa_accuracy("3", ["2"]) == 0.0


@pytest.mark.parametrize("answers", [[], "yes"])
def test_vqa_accuracy_needs_a_list_of_answers(answers: list[str] | str) -> None:
    with pytest.raises(ConfigError, match="answers"):
        vqa_accuracy("yes", answers)


@given(st.integers(2, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.randoms())))
def test_vqa_accuracy_is_the_leave_one_out_average_bounded_and_monotone(case: tuple[int, int, random.Random]) -> None:
    total, matches, rng = case
    answers = ["yes"] * matches + ["no"] * (total - matches)
    rng.shuffle(answers)
    accuracy = vqa_accuracy("yes", answers)
    # brute force: drop each answer in turn and count the matches among the rest
    brute = sum(min(1.0, (answers[:i] + answers[i + 1 :]).count("yes") / 3) for i in range(total)) / total
    assert accuracy == pytest.approx(brute)
    assert 0.0 <= accuracy <= 1.0
    if matches < total:
        assert vqa_accuracy("yes", ["yes"] * (matches + 1) + ["no"] * (total - matches - 1)) >= accuracy


# ---------------------------------------------------------------------------------------------------------------------
# GQA exact match
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Yes", "yes", 1.0),  # case
        ("yes.", "yes", 1.0),  # trailing period
        (" left \n", "left", 1.0),  # surrounding whitespace
        ("t-shirt", "t-shirt", 1.0),
        ("tshirt", "t-shirt", 1.0),  # every ASCII mark is deleted on both sides
        ("the dog", "dog", 0.0),  # no article removal in GQA
        ("two", "2", 0.0),  # nor number words
        ("Yes, it is", "yes", 0.0),
        ("", "yes", 0.0),  # empty prediction
    ],
)
def test_exact_match(prediction: str, answer: str, expected: float) -> None:
    assert exact_match(prediction, answer) == expected


# ---------------------------------------------------------------------------------------------------------------------
# Yes/no: parsing, POPE, MME
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes", "yes"),
        (" YES. ", "yes"),
        ("No.", "no"),
        ("y", "yes"),
        ("N", "no"),
        ("x", "other"),
        ("Yes, there is a dog.", "yes"),
        ("No, there is not.", "no"),
        ("Nope", "no"),  # "no" within the first four characters
        ("not sure", "no"),  # the same rule, a known quirk of the Otter/lmms-eval parser
        ("There is a dog.", "other"),  # only the first four characters are read
        ("I don't know", "other"),
        ("", "other"),  # empty prediction
    ],
)
def test_parse_yes_no(prediction: str, expected: str) -> None:
    assert parse_yes_no(prediction) == expected


def test_pope_metrics_on_a_known_confusion_matrix() -> None:
    answers = ["yes"] * 5 + ["no"] * 5
    predictions = [
        "Yes",  # TP
        "yes.",  # TP
        "Yes, there is a cup.",  # TP
        "No",  # FN
        "I cannot tell.",  # other -> not yes: FN
        "Yes",  # FP
        "no",  # TN
        "No.",  # TN
        "No, there is none.",  # TN
        "n",  # TN
    ]
    # TP=3 FN=2 FP=1 TN=4: accuracy (3+4)/10 = 0.7, precision 3/4, recall 3/5,
    # F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3, yes-ratio = predicted yes / all = 4/10
    metrics = pope_metrics(predictions, answers)
    assert metrics == pytest.approx({"accuracy": 0.7, "precision": 0.75, "recall": 0.6, "f1": 2 / 3, "yes_ratio": 0.4})


def test_pope_metrics_without_a_yes_prediction_has_zero_precision_and_f1() -> None:
    # all answered no: TN=1, FN=1; precision 0/0 -> 0, recall 0/1, F1 0
    assert pope_metrics(["No", "No"], ["yes", "no"]) == {
        "accuracy": 0.5,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "yes_ratio": 0.0,
    }


@pytest.mark.parametrize(
    ("predictions", "answers", "message"),
    [
        (["yes"], ["yes", "no"], "as many"),
        ([], [], "at least one"),
        (["yes"], ["maybe"], "'yes' or 'no'"),
    ],
)
def test_pope_metrics_rejects_bad_input(predictions: list[str], answers: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pope_metrics(predictions, answers)


def _mme(category: str, image: str, prediction: str, answer: str) -> dict[str, object]:
    return {"question_id": image, "category": category, "prediction": prediction, "answer": answer}


def test_mme_scores_per_subtask_and_headline() -> None:
    records = [
        # existence: image 1 both right, image 2 one of two right
        #   acc = 3/4 questions = 75, acc+ = 1/2 images = 50, score 125
        _mme("existence", "e1.jpg", "Yes", "Yes"),
        _mme("existence", "e1.jpg", "No.", "No"),
        _mme("existence", "e2.jpg", "Yes, there is.", "Yes"),
        _mme("existence", "e2.jpg", "Yes", "No"),
        # OCR: everything right -> 100 + 100 = 200
        _mme("OCR", "o1.jpg", "yes", "Yes"),
        _mme("OCR", "o1.jpg", "no", "No"),
        _mme("OCR", "o2.jpg", "Y", "Yes"),
        _mme("OCR", "o2.jpg", "N", "No"),
        # code_reasoning: image 1 one of two right, image 2 none (an unreadable answer counts as wrong)
        #   acc = 1/4 = 25, acc+ = 0/2 = 0, score 25
        _mme("code_reasoning", "c1.png", "Yes", "Yes"),
        _mme("code_reasoning", "c1.png", "Yes", "No"),
        _mme("code_reasoning", "c2.png", "The code prints 3.", "Yes"),
        _mme("code_reasoning", "c2.png", "Yes", "No"),
    ]
    scores = mme_scores(records)
    assert scores["existence/acc"] == 75.0
    assert scores["existence/acc_plus"] == 50.0
    assert scores["existence/score"] == 125.0
    assert scores["OCR/score"] == 200.0
    assert scores["code_reasoning/acc"] == 25.0
    assert scores["code_reasoning/acc_plus"] == 0.0
    assert scores["code_reasoning/score"] == 25.0
    assert scores["mme_perception"] == 125.0 + 200.0  # absent perception subtasks add nothing
    assert scores["mme_cognition"] == 25.0


def test_mme_subtask_lists_are_lmms_evals() -> None:
    assert len(MME_PERCEPTION) == 10
    assert set(MME_COGNITION) == {
        "commonsense_reasoning",
        "numerical_calculation",
        "text_translation",
        "code_reasoning",
    }


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "at least one"),
        ([_mme("existence", "e1", "Yes", "Yes")], "two questions per image"),
        ([_mme("existence", "e1", "Yes", "Yes")] * 3, "has 3"),
        ([_mme("Existence", "e1", "Yes", "Yes")] * 2, "unknown MME category 'Existence'"),
        ([_mme("existence", "e1", "Yes", "Maybe")] * 2, "'yes' or 'no'"),
        ([{"question_id": "e1", "category": "existence", "answer": "Yes"}] * 2, "'prediction'"),
    ],
)
def test_mme_scores_rejects_bad_records(records: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mme_scores(records)


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------------------------------------------------

PETS = ["a cat", "a dog", "red", "red and blue"]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", "B"),  # 1. bare letter
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        (" D \n", "D"),
        ("A dog.", "B"),  # 2. the whole answer is an option's text
        ("RED", "C"),
        ("B) a dog", "B"),  # 3. leading letter marker
        ("C. red", "C"),
        ("(C) red", "C"),
        ("D: red and blue", "D"),
        ("The answer is D", "D"),  # 4. answer phrase
        ("Answer: (C)", "C"),
        ("I choose option C.", "C"),
        ("I think the answer is A, not B", "A"),
        ("Option A is wrong; the answer is C", "C"),  # the last phrase counts
        ("It has to be B, I think", "B"),  # 5. one standalone letter
        ("A is correct", "A"),  # a bare A in a short answer is a letter ...
        ("It is red and blue", "D"),  # 6. option text inside the answer; the longest of nested options wins
        ("It is red", "C"),
        ("A dog is running", "B"),  # ... in a longer one an article, so the option text decides
        ("E", None),  # only the first len(choices) letters are valid
        ("The answer is E", None),
        ("Both B and C", None),  # two letters: ambiguous
        ("the cat and the dog", None),  # two option texts: ambiguous
        ("answer is b", None),  # a lower-case letter counts only as the whole answer
        ("", None),  # empty prediction
        ("   ", None),
    ],
)
def test_extract_choice(prediction: str, expected: str | None) -> None:
    assert extract_choice(prediction, PETS) == expected


@given(st.text(max_size=30), st.lists(st.text(max_size=8), min_size=1, max_size=8))
def test_extract_choice_returns_a_valid_letter_or_none(prediction: str, choices: list[str]) -> None:
    assert extract_choice(prediction, choices) in (None, *string.ascii_uppercase[: len(choices)])


@given(st.integers(2, 8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_extract_choice_reads_every_letter_format(case: tuple[int, int]) -> None:
    total, index = case
    choices = [f"option number {i}" for i in range(total)]
    letter = string.ascii_uppercase[index]
    for prediction in (letter, f"({letter})", f"{letter}.", f"{letter}) {choices[index]}", f"The answer is {letter}"):
        assert extract_choice(prediction, choices) == letter
    assert extract_choice(choices[index], choices) == letter


def test_extract_choice_rejects_bad_choices() -> None:
    with pytest.raises(ConfigError, match="1 to 26"):
        extract_choice("A", [])
    with pytest.raises(ConfigError, match="1 to 26"):
        extract_choice("A", "abc")


def test_multiple_choice_accuracy() -> None:
    predictions = ["B", "The answer is (A).", "C", "a dog"]
    choices = [PETS, PETS, ["yes", "no"], PETS]
    answers = ["B", "a", "A", "B"]
    # right, right (answer letters are case-insensitive), wrong (C is not an option of a two-way question), right
    assert multiple_choice_accuracy(predictions, choices, answers) == 0.75


@pytest.mark.parametrize(
    ("choices", "answers", "message"),
    [
        ([PETS], ["B", "C"], "as many"),
        ([["yes", "no"]], ["C"], "letters A, B"),
        ([PETS], ["0"], "letters A, B, C, D"),  # a loader passing the index instead of the letter
    ],
)
def test_multiple_choice_accuracy_rejects_bad_input(choices: list[list[str]], answers: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        multiple_choice_accuracy(["A"] * len(choices), choices, answers)


def test_mmbench_circular_accuracy_needs_every_variant_right() -> None:
    def variant(index: int, choices: list[str], answer: str, prediction: str) -> dict[str, object]:
        return {"index": index, "choices": choices, "answer": answer, "prediction": prediction}

    records = [
        # question 1, "dog" in four rotations, all right (by letter and by text) -> right
        variant(1, ["cat", "dog", "bird", "fish"], "B", "B"),
        variant(1, ["dog", "bird", "fish", "cat"], "A", "(A) dog"),
        variant(1, ["bird", "fish", "cat", "dog"], "D", "dog"),
        variant(1, ["fish", "cat", "dog", "bird"], "C", "The answer is C."),
        # question 2, "red" in four rotations; the third variant is answered wrong -> wrong
        variant(2, ["red", "green", "blue", "black"], "A", "A"),
        variant(2, ["green", "blue", "black", "red"], "D", "D"),
        variant(2, ["blue", "black", "red", "green"], "C", "B"),
        variant(2, ["black", "red", "green", "blue"], "B", "B"),
        # question 3, two options, two rotations, both right -> right
        variant(3, ["yes", "no"], "B", "no"),
        variant(3, ["no", "yes"], "A", "A"),
        # question 4, one variant that no rule can read -> wrong
        variant(4, ["up", "down"], "A", "I cannot see the image."),
    ]
    # 2 of 4 questions right
    assert mmbench_circular_accuracy(records) == 0.5
    # the failing variant alone decides question 2: with it fixed, 3 of 4
    records[6] = variant(2, ["blue", "black", "red", "green"], "C", "C")
    assert mmbench_circular_accuracy(records) == 0.75


def test_mmbench_circular_accuracy_rejects_bad_records() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        mmbench_circular_accuracy([])
    with pytest.raises(ConfigError, match="'choices'"):
        mmbench_circular_accuracy([{"index": 1, "choices": "AB", "answer": "A", "prediction": "A"}])
    with pytest.raises(ConfigError, match="'index'"):
        mmbench_circular_accuracy([{"choices": ["x", "y"], "answer": "A", "prediction": "A"}])
