"""The official metrics of the benchmarks we evaluate, as pure functions of predictions and ground truth.

Each function reproduces the rule the published numbers were computed with (the VQA evaluation server, lmms-eval's
task utilities, MMBench's CircularEval), so that a score here can be set beside a score in a paper. Where those
sources disagree or have a quirk, the docstring says which way we went and why. Accuracies are fractions in [0, 1],
except MME, whose scores are conventionally reported on its own 0..200 per-subtask scale.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

from fopru.errors import ConfigError

__all__ = [
    "MME_COGNITION",
    "MME_PERCEPTION",
    "exact_match",
    "extract_choice",
    "mmbench_circular_accuracy",
    "mme_scores",
    "multiple_choice_accuracy",
    "normalize_vqa_answer",
    "parse_yes_no",
    "pope_metrics",
    "vqa_accuracy",
]

# ---------------------------------------------------------------------------------------------------------------------
# VQA answer normalization (VQAv2, TextVQA, VizWiz, OK-VQA)
# ---------------------------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The marks the VQA evaluation treats as punctuation. Not ' (contractions), not . (handled separately so that
# decimals survive), and not : * # % & $ ^ | ~, which the official list leaves alone.
_VQA_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'

# The official pattern is r"(?!<=\d)(\.)(?!\d)": its first group is a look-ahead (not a look-behind) that can never
# fail in front of a ".", so in effect a period is dropped unless a digit follows it ("2.5" stays, "2." loses it).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (32) where Pattern.sub expects `count`: only the first 32 periods go.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)

# Every contraction the official table restores, written with its apostrophes. The table maps each spelling that lacks
# exactly one of the apostrophes to this form: "dont" -> "don't"; "couldnt've" and "couldn'tve" -> "couldn't've" (but
# not "couldntve"). Spellings that are ordinary words (wed, shed, ill, its, well, were, id) are absent, as there.
_CONTRACTIONS = (  # noqa: SIM905 - a word list reads better as text than as quoted items
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've "
    "somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's "
    "who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've"
).split()


def _missing_one_apostrophe(word: str) -> list[str]:
    """The spellings of `word` with exactly one of its apostrophes left out."""
    return [word[:i] + word[i + 1 :] for i, char in enumerate(word) if char == "'"]


_CONTRACTION_REPAIRS = {spelling: word for word in _CONTRACTIONS for spelling in _missing_one_apostrophe(word)}
# The official table has this one entry backwards; kept so that scores match it to the last answer.
_CONTRACTION_REPAIRS["somebody'd"] = "somebodyd"
# Its entries for "Im", "Ive", "Id've", "I'dve" are capitalised and never fire on the lower-cased text, so "im" and
# "ive" stay as they are here too.


def normalize_vqa_answer(text: str) -> str:
    """Normalize a VQA answer the way the official evaluation (EvalAI / lmms-eval's EvalAIAnswerProcessor) does.

    Matching answers on the normalized form is what makes "Two", "2" and "two." the same answer. In order:

    1. lower-case; delete every "," and "?"; split a possessive "'s" off its word ("man's" -> "man 's");
       newlines and tabs become spaces; strip. Deleting commas first is what turns "1,000" into "1000".
    2. each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if that mark touches a space somewhere in
       the answer, else replaced by a space everywhere ("t-shirt" -> "t shirt", "well - done" -> "well done").
    3. a period is dropped unless a digit follows it ("2.5" stays, "yes." -> "yes"; the first 32 periods only).
    4. split on whitespace; number words zero..ten (and "none") become digits; the articles a, an, the are
       dropped; contractions missing an apostrophe are repaired ("dont" -> "don't"); rejoin with single spaces.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # The choice between deleting and spacing looks at the text as it was before any mark was handled.
    spaced = text
    for mark in _VQA_PUNCTUATION:
        replacement = "" if f"{mark} " in text or f" {mark}" in text else " "
        spaced = spaced.replace(mark, replacement)
    spaced = _PERIOD_NOT_BEFORE_DIGIT.sub("", spaced, count=_OFFICIAL_PERIOD_COUNT)
    words = [_NUMBER_WORDS.get(word, word) for word in spaced.split()]
    words = [_CONTRACTION_REPAIRS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one prediction against its human answers (usually 10), in [0, 1].

    Official rule: for each answer i, score min(1, (number of the *other* answers equal to the prediction) / 3), and
    average over i; prediction and answers are compared after :func:`normalize_vqa_answer`. With 10 answers, a
    prediction given by k of the annotators scores 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >= 4, exactly: the
    sum is taken over integers and divided once.

    The official evaluator applies punctuation/article handling to the answers only when they are not unanimous
    (lmms-eval's VQAv2 copy does the same; its TextVQA copy always does). Normalization is idempotent on the answers
    the datasets ship, so we always normalize both sides, as the TextVQA path does.

    A single answer has no leave-one-out subset (the formula would give 0 whatever the prediction), so one answer is
    scored by exact match of the normalized strings instead.
    """
    if isinstance(answers, str) or not answers:
        raise ConfigError(f"vqa_accuracy needs a non-empty sequence of answer strings, got answers={answers!r}")
    predicted = normalize_vqa_answer(prediction)
    normalized = [normalize_vqa_answer(answer) for answer in answers]
    matches = sum(answer == predicted for answer in normalized)
    if len(normalized) == 1:
        return float(matches)
    # Leaving out a matching answer leaves matches - 1 others equal to the prediction; leaving out another, matches.
    credit = matches * min(3, matches - 1) + (len(normalized) - matches) * min(3, matches)
    # int / int is correctly rounded, so 9 / 30 is exactly the float 0.3.
    return credit / (3 * len(normalized))


# ---------------------------------------------------------------------------------------------------------------------
# GQA exact match
# ---------------------------------------------------------------------------------------------------------------------

_DELETE_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _exact_match_form(text: str) -> str:
    return text.lower().translate(_DELETE_ASCII_PUNCTUATION).strip()


def exact_match(prediction: str, answer: str) -> float:
    """GQA-style exact match: 1.0 if prediction and answer agree after normalization, else 0.0.

    lmms-eval scores GQA (gqa.yaml) with its generic ``exact_match`` metric and ``ignore_case: true,
    ignore_punctuation: true``: both strings are lower-cased and every ASCII punctuation mark
    (``string.punctuation``) is deleted, so "Yes." matches "yes" and "t-shirt" matches "tshirt". We also strip
    surrounding whitespace, which lmms-eval's model wrappers do to every generation before scoring. Articles and
    inner spacing are left alone: "the dog" does not match "dog".
    """
    return float(_exact_match_form(prediction) == _exact_match_form(answer))


# ---------------------------------------------------------------------------------------------------------------------
# Yes/no benchmarks: POPE and MME
# ---------------------------------------------------------------------------------------------------------------------


def parse_yes_no(prediction: str) -> str:
    """Read a free-form answer as "yes", "no" or "other", by lmms-eval's MME rule (mme/utils.py, from Otter).

    Lower-case, strip, delete periods; "yes"/"no" as is; a one-letter answer "y"/"n"; otherwise look only at the
    first four characters: "yes" there means yes, else "no" there means no (so "No, it is not" is no, and so are
    "not sure" and "none"), else other.
    """
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _yes_no_label(answer: str, where: str) -> str:
    label = answer.lower().strip().replace(".", "")
    if label not in ("yes", "no"):
        raise ConfigError(f"{where}: a ground-truth answer must be 'yes' or 'no', got {answer!r}")
    return label


def pope_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio, with "yes" the positive class, each in [0, 1].

    Predictions are read with :func:`parse_yes_no`; an "other" prediction counts as wrong and as not-yes. Precision
    is TP / (predicted yes), recall TP / (answer yes), F1 their harmonic mean, each 0 when its denominator is 0 (as
    in lmms-eval's pope/utils.py). ``yes_ratio`` is the fraction of *predictions* that are yes, POPE's measure of a
    model's bias towards yes; lmms-eval's ``pope_yes_ratio`` counts the ground-truth answers instead (always 0.5
    on POPE's balanced splits), which we do not follow.
    """
    if len(predictions) != len(answers) or not answers:
        raise ConfigError(
            f"pope_metrics needs as many predictions as answers, at least one; got {len(predictions)} and "
            f"{len(answers)}"
        )
    truths = [_yes_no_label(answer, f"pope_metrics answer {i}") for i, answer in enumerate(answers)]
    guesses = [parse_yes_no(prediction) for prediction in predictions]
    true_positives = sum(g == "yes" and t == "yes" for g, t in zip(guesses, truths, strict=True))
    predicted_yes = sum(g == "yes" for g in guesses)
    actual_yes = sum(t == "yes" for t in truths)
    correct = sum(g == t for g, t in zip(guesses, truths, strict=True))
    precision = true_positives / predicted_yes if predicted_yes else 0.0
    recall = true_positives / actual_yes if actual_yes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / len(truths),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": predicted_yes / len(truths),
    }


# lmms-eval's mme/utils.py eval_type_dict: the subtasks summed into each of MME's two headline scores.
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def _text_field(record: Mapping[str, object], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where} needs a string {key!r}, got {value!r}")
    return value


def _id_field(record: Mapping[str, object], key: str, where: str) -> Hashable:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where} needs an int or string {key!r}, got {value!r}")
    return value


def mme_scores(records: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """MME's per-subtask and headline scores (lmms-eval's mme/utils.py, the official MME calculation).

    Each record is one question: "question_id" (the image; MME asks two questions per image, one with answer Yes and
    one with No), "category" (the subtask), "prediction" (read with :func:`parse_yes_no`) and "answer". Per subtask,
    ``acc`` is the percentage of questions answered right, ``acc_plus`` the percentage of images with both answered
    right, and ``score = acc + acc_plus`` (0..200). ``mme_perception`` sums the scores of the ten perception
    subtasks (max 2000), ``mme_cognition`` of the four cognition ones (max 800); a subtask absent from `records`
    contributes nothing, so a partial run sums what it has.
    """
    if not records:
        raise ConfigError("mme_scores needs at least one record")
    known = (*MME_PERCEPTION, *MME_COGNITION)
    # category -> image -> correctness of its questions
    outcomes: dict[str, dict[Hashable, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for i, record in enumerate(records):
        where = f"mme_scores record {i}"
        category = _text_field(record, "category", where)
        if category not in known:
            raise ConfigError(f"{where}: unknown MME category {category!r}; the categories are {', '.join(known)}")
        image = _id_field(record, "question_id", where)
        truth = _yes_no_label(_text_field(record, "answer", where), where)
        guess = parse_yes_no(_text_field(record, "prediction", where))
        outcomes[category][image].append(guess == truth)
    scores: dict[str, float] = {}
    for category, images in outcomes.items():
        for image, rights in images.items():
            if len(rights) != 2:
                raise ConfigError(
                    f"mme_scores: MME asks two questions per image, but {category!r} image {image!r} has {len(rights)}"
                )
        acc = 100.0 * sum(sum(rights) for rights in images.values()) / (2 * len(images))
        acc_plus = 100.0 * sum(all(rights) for rights in images.values()) / len(images)
        scores[f"{category}/acc"] = acc
        scores[f"{category}/acc_plus"] = acc_plus
        scores[f"{category}/score"] = acc + acc_plus
    scores["mme_perception"] = sum(scores.get(f"{category}/score", 0.0) for category in MME_PERCEPTION)
    scores["mme_cognition"] = sum(scores.get(f"{category}/score", 0.0) for category in MME_COGNITION)
    return scores


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice: ScienceQA-IMG, SEED-Bench, AI2D, MMBench
# ---------------------------------------------------------------------------------------------------------------------

_BRACKETS_AND_MARKS = "()[].,:;!?\"'*"
_LEADING_LETTER = re.compile(r"\(?([A-Z])(?:\)|\.|:|$)")
# Case-insensitive phrase, upper-case letter: "the answer is a cat" names no option.
_ANSWER_PHRASE = re.compile(r"\b(?i:answer|option|choice)\b\s*(?:(?i:is)\s*|:\s*)?\(?([A-Z])\b\)?")


def _option_letters(choices: Sequence[str]) -> str:
    if isinstance(choices, str) or not 1 <= len(choices) <= 26:
        raise ConfigError(f"a multiple-choice question needs 1 to 26 option strings, got choices={choices!r}")
    return string.ascii_uppercase[: len(choices)]


def _option_form(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def extract_choice(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter a free-form answer picks among ``len(choices)`` options (A, B, C, ...), or None.

    Small models answer "B", "(B)", "B. a cat", "The answer is B" or just "a cat"; every benchmark's official parser
    accepts some of these, and a pruned model drifts between them, so one extractor covers them all. The first rule
    that yields a letter wins (only the first ``len(choices)`` letters are valid):

    1. the whole answer is a letter, bare or wrapped in brackets/punctuation, any case: "B", "b", "(B)", "B.";
    2. the whole answer is one option's text, case, spacing and a final period aside: "A dog." picks "a dog";
    3. the answer opens with an upper-case letter closed by ")", "." or ":", or "(B)": "B. a cat", "B) a cat",
       "(B) a cat" (ScienceQA's rule, as lmms-eval's scienceqa/utils.py applies it);
    4. an answer phrase: "answer", "option" or "choice", optionally followed by "is" or ":", then the upper-case
       letter, possibly in brackets: "The answer is B", "Answer: (C)", "option D"; the last such phrase counts;
    5. MMBench's rule (lmms-eval's mmbench_evals.py, can_infer_option): exactly one distinct valid letter stands as
       a whole upper-case word once surrounding brackets/punctuation are removed; a bare "A" is taken for the
       article and ignored when the answer has more than three words, as there;
    6. MMBench's can_infer_text: the one option whose text occurs in the answer, ignoring options contained in
       another occurring option ("red and blue" beats "red"); several or none: None.
    """
    letters = _option_letters(choices)
    text = prediction.strip()
    if not text:
        return None

    bare = text.strip(_BRACKETS_AND_MARKS + " ").upper()
    if len(bare) == 1 and bare in letters:
        return bare

    answer = _option_form(text)
    options = [_option_form(choice) for choice in choices]
    for letter, option in zip(letters, options, strict=True):
        if option and option == answer:
            return letter

    leading = _LEADING_LETTER.match(text)
    if leading is not None and leading.group(1) in letters:
        return leading.group(1)

    phrases = [m.group(1) for m in _ANSWER_PHRASE.finditer(text) if m.group(1) in letters]
    if phrases:
        return phrases[-1]

    words = text.split()
    standalone: set[str] = set()
    for word in words:
        core = word.strip(_BRACKETS_AND_MARKS)
        if len(core) == 1 and core in letters and not (word == "A" and len(words) > 3):
            standalone.add(core)
    if len(standalone) == 1:
        return standalone.pop()

    occurring = [
        (letter, option) for letter, option in zip(letters, options, strict=True) if option and option in answer
    ]
    maximal = [
        (letter, option) for letter, option in occurring if not any(option in o and option != o for _, o in occurring)
    ]
    if len(maximal) == 1:
        return maximal[0][0]
    return None


def _answer_letter(answer: str, letters: str, where: str) -> str:
    letter = answer.strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise ConfigError(f"{where}: the answer must be one of the letters {', '.join(letters)}, got {answer!r}")
    return letter


def multiple_choice_accuracy(
    predictions: Sequence[str], choices: Sequence[Sequence[str]], answers: Sequence[str]
) -> float:
    """The fraction of questions whose extracted letter (:func:`extract_choice`) is the answer letter, in [0, 1].

    ScienceQA-IMG, SEED-Bench and AI2D score plain accuracy over letters; an answer no rule can read counts as wrong.
    """
    if not len(predictions) == len(choices) == len(answers) or not answers:
        raise ConfigError(
            "multiple_choice_accuracy needs as many predictions, choice lists and answers, at least one; got "
            f"{len(predictions)}, {len(choices)} and {len(answers)}"
        )
    right = 0
    for i, (prediction, options, answer) in enumerate(zip(predictions, choices, answers, strict=True)):
        letter = _answer_letter(answer, _option_letters(options), f"multiple_choice_accuracy question {i}")
        right += extract_choice(prediction, options) == letter
    return right / len(answers)


def mmbench_circular_accuracy(records: Sequence[Mapping[str, object]]) -> float:
    """MMBench CircularEval accuracy: the fraction of questions right in *every* circular variant, in [0, 1].

    Each record is one variant: "index" (the question; its variants, whose options are rotated, share it),
    "prediction", "choices" (the option texts in this variant's order) and "answer" (this variant's letter). Raw
    MMBench tsv files number the variants ``index + k * 1_000_000``; the loader maps them to ``index % 1_000_000``.
    The official evaluator (lmms-eval's mmbench_evals.py) asks ChatGPT when its rules cannot read an answer; we do not,
    so such a variant counts as wrong.
    """
    if not records:
        raise ConfigError("mmbench_circular_accuracy needs at least one record")
    question_right: dict[Hashable, bool] = {}
    for i, record in enumerate(records):
        where = f"mmbench_circular_accuracy record {i}"
        question = _id_field(record, "index", where)
        options = record.get("choices")
        if (
            isinstance(options, str)
            or not isinstance(options, Sequence)
            or not all(isinstance(o, str) for o in options)
        ):
            raise ConfigError(f"{where} needs 'choices', a sequence of option strings, got {options!r}")
        letter = _answer_letter(_text_field(record, "answer", where), _option_letters(options), where)
        right = extract_choice(_text_field(record, "prediction", where), options) == letter
        question_right[question] = question_right.get(question, True) and right
    return sum(question_right.values()) / len(question_right)
