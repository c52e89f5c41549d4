"""The official metrics of the benchmarks we evaluate, as pure functions of predictions and ground truth.

Two families live here, one per scoring protocol (:mod:`fopru.data.scoring`):

- ``lmms_eval`` (the default): each benchmark's rule re-expressed from lmms-eval's task code at
  :data:`LMMS_EVAL_REVISION` (``lmms_eval/tasks/<task>/utils.py``, its task yaml, and
  ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``), answer reading, normalization, per-sample score and
  aggregation alike, quirks included, so that a score here can be set beside a published lmms-eval table. The
  functions of this family name the lmms-eval file they follow.
- ``lenient``: fopru's forgiving readers (:func:`extract_choice`, :func:`parse_yes_no` for POPE, per-split POPE
  means). They read more answer formats than lmms-eval does, so their numbers are not comparable with published ones.
- ``llava``: the LLaVA repository's own evaluation scripts at :data:`LLAVA_REVISION`, which many LLaVA-1.5 papers
  scored with, for the benchmarks whose scoring code that repository holds (POPE, ScienceQA-IMG, TextVQA, SEED-Bench).

Accuracies are fractions in [0, 1], except MME, whose scores are conventionally reported on its own 0..200
per-subtask scale.
"""

from __future__ import annotations

import re
import statistics
import string
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

from fopru.errors import ConfigError

#: The lmms-eval repository and revision whose task code the ``lmms_eval`` protocol follows (commit of 2026-08-06).
LMMS_EVAL_REPOSITORY = "EvolvingLMMs-Lab/lmms-eval"
LMMS_EVAL_REVISION = "75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"
LMMS_EVAL_REVISION_DATE = "2026-08-06"
#: The LLaVA repository and revision whose evaluation scripts (``llava/eval/*.py``, ``scripts/v1_5/eval/*``) the
#: ``llava`` protocol follows (commit of 2024-05-12).
LLAVA_REPOSITORY = "haotian-liu/LLaVA"
LLAVA_REVISION = "c121f0432da27facab705978f83c4ada465e46fd"

__all__ = [
    "LLAVA_REVISION",
    "LMMS_EVAL_REVISION",
    "MME_COGNITION",
    "MME_PERCEPTION",
    "ai2d_correct",
    "exact_match",
    "extract_choice",
    "llava_pope_reading",
    "llava_scienceqa_letter",
    "lmms_eval_exact_match",
    "lmms_eval_pope_metrics",
    "lmms_eval_vqa_accuracy",
    "mcq_extract_letter",
    "mmbench_can_infer_option",
    "mmbench_can_infer_text",
    "mmbench_circular_accuracy",
    "mmbench_scores",
    "mme_scores",
    "multiple_choice_accuracy",
    "normalize_vqa_answer",
    "normalize_vqav2_answer",
    "parse_yes_no",
    "pope_metrics",
    "scienceqa_correct",
    "seedbench_correct",
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
# EvalAIAnswerProcessor.COMMA_STRIP: a comma between two digits.
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")

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


def _vqa_punctuation(text: str) -> str:
    """EvalAIAnswerProcessor.process_punctuation: marks deleted or spaced, then periods not before a digit dropped."""
    # A comma between digits anywhere ("1,000") makes every mark be deleted rather than spaced.
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    # The choice between deleting and spacing looks at the text as it was before any mark was handled.
    spaced = text
    for mark in _VQA_PUNCTUATION:
        replacement = "" if delete_all or f"{mark} " in text or f" {mark}" in text else " "
        spaced = spaced.replace(mark, replacement)
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", spaced, count=_OFFICIAL_PERIOD_COUNT)


def _vqa_digits_articles(text: str) -> str:
    """EvalAIAnswerProcessor.process_digit_article: lower-case words, number words to digits, no articles."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTION_REPAIRS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def normalize_vqa_answer(text: str) -> str:
    """Normalize a VQA answer the way the official evaluation (EvalAI / lmms-eval's EvalAIAnswerProcessor) does.

    This is the processor's full ``__call__``, which lmms-eval's TextVQA scorer applies to prediction and answers.
    Matching answers on the normalized form is what makes "Two", "2" and "two." the same answer. In order:

    1. lower-case; delete every "," and "?"; split a possessive "'s" off its word ("man's" -> "man 's");
       newlines and tabs become spaces; strip. Deleting commas first is what turns "1,000" into "1000".
    2. each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted if that mark touches a space somewhere in
       the answer (or a comma stands between two digits), else replaced by a space everywhere ("t-shirt" ->
       "t shirt", "well - done" -> "well done").
    3. a period is dropped unless a digit follows it ("2.5" stays, "yes." -> "yes"; the first 32 periods only).
    4. split on whitespace; number words zero..ten (and "none") become digits; the articles a, an, the are
       dropped; contractions missing an apostrophe are repaired ("dont" -> "don't"); rejoin with single spaces.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def normalize_vqav2_answer(text: str) -> str:
    """Normalize a VQAv2 answer as lmms-eval's ``vqav2/utils.py`` (``vqav2_process_results``) does.

    Newlines and tabs become spaces and the text is stripped; then only steps 2 to 4 of :func:`normalize_vqa_answer`
    run (``process_punctuation``, ``process_digit_article``), without its first step: commas are not deleted
    up front ("red,white" -> "red white", where TextVQA gives "redwhite"; "1,000" still becomes "1000", as a comma
    between digits deletes every mark), "?" is handled as any other mark, and "'s" is not split off ("there's"
    stays "there's", where TextVQA gives "there 's").
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _vqa_digits_articles(_vqa_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of one prediction against its human answers (usually 10), in [0, 1].

    Official rule: for each answer i, score min(1, (number of the *other* answers equal to the prediction) / 3), and
    average over i; prediction and answers are compared after :func:`normalize_vqa_answer`. With 10 answers, a
    prediction given by k of the annotators scores 0, 0.3, 0.6, 0.9, 1.0 for k = 0, 1, 2, 3, >= 4, exactly: the
    sum is taken over integers and divided once.

    This is the ``lenient`` protocol's VQA accuracy (TextVQA's normalization on both sides, for VQAv2 too);
    :func:`lmms_eval_vqa_accuracy` is lmms-eval's. The VQA evaluation server normalizes the answers only when they
    are not unanimous; lmms-eval's VQAv2 and TextVQA scorers always do, and so do we.

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


def _option_texts(record: Mapping[str, object], where: str) -> list[str]:
    options = record.get("choices")
    if isinstance(options, str) or not isinstance(options, Sequence) or not all(isinstance(o, str) for o in options):
        raise ConfigError(f"{where} needs 'choices', a sequence of option strings, got {options!r}")
    return list(options)


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
        options = _option_texts(record, where)
        letter = _answer_letter(_text_field(record, "answer", where), _option_letters(options), where)
        right = extract_choice(_text_field(record, "prediction", where), options) == letter
        question_right[question] = question_right.get(question, True) and right
    return sum(question_right.values()) / len(question_right)


# ---------------------------------------------------------------------------------------------------------------------
# The lmms_eval protocol: lmms-eval's task code at LMMS_EVAL_REVISION, benchmark by benchmark
# ---------------------------------------------------------------------------------------------------------------------
# lmms-eval strips every generation (api/task.py, process_results) before a task's own rule sees it; the callers
# here receive the prediction already cut at the task's stop strings, and each function strips it again as there.


def lmms_eval_vqa_accuracy(prediction: str, answers: Sequence[str], *, textvqa: bool) -> float:
    """lmms-eval's VQA accuracy: ``textvqa/utils.py`` (``textvqa=True``) or ``vqav2/utils.py`` (False), in [0, 1].

    Prediction and answers are normalized with :func:`normalize_vqa_answer` (TextVQA) or
    :func:`normalize_vqav2_answer` (VQAv2); for each answer i, min(1, (other answers equal to the prediction) / 3),
    averaged with ``statistics.mean``. The answer left out is left out by position (VQAv2's answer records differ in
    their ``answer_id``), so a single answer scores 0 whatever the prediction, as there.
    """
    if isinstance(answers, str) or not answers:
        raise ConfigError(f"a VQA score needs a non-empty sequence of answer strings, got answers={answers!r}")
    normalize = normalize_vqa_answer if textvqa else normalize_vqav2_answer
    predicted = normalize(prediction.strip())
    normalized = [normalize(answer) for answer in answers]
    per_answer = [
        min(1.0, float(sum(other == predicted for j, other in enumerate(normalized) if j != i)) / 3)
        for i in range(len(normalized))
    ]
    return float(statistics.mean(per_answer))


def _lmms_eval_exact_match_form(text: str) -> str:
    return text.lower().translate(_DELETE_ASCII_PUNCTUATION)


def lmms_eval_exact_match(prediction: str, reference: str) -> float:
    """lmms-eval's ``exact_match`` metric with ``ignore_case`` and ``ignore_punctuation`` (``api/metrics.py``).

    GQA (``gqa/gqa.yaml``) and AI2D (``ai2d/ai2d.yaml``) score with it. The prediction is stripped first (as every
    generation is), then both sides are lower-cased and lose every ``string.punctuation`` mark; the reference is not
    stripped. Whitespace left around a deleted mark therefore stays: "Yes ." gives "yes " and misses "yes".
    """
    return float(_lmms_eval_exact_match_form(prediction.strip()) == _lmms_eval_exact_match_form(reference))


def lmms_eval_pope_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """POPE as lmms-eval's ``pope/utils.py`` scores it, "yes" the positive class; fractions in [0, 1].

    A prediction is read as its stripped, lower-cased text: only exactly "yes" and "no" are answers ("Yes." and
    "yes, there is" are neither). ``accuracy``: predictions equal to the answer. ``precision``: TP / (TP + FP) with
    FP a "yes" to a "no" question. ``recall``: TP / (TP + FN) with FN a "no" to a "yes" question, so an unreadable
    answer to a "yes" question leaves the denominator. ``f1``: their harmonic mean; each is 0 when its denominator is.
    Two yes-ratios, named apart: ``predicted_yes_ratio`` is the share of predictions that are "yes" (the POPE paper's
    measure of a bias towards yes); ``lmms_eval_yes_ratio`` is what lmms-eval's ``pope_yes_ratio`` reports, the
    share of *answers* that are "yes" (0.5 on POPE's balanced splits, whatever the model says). ``unreadable``
    counts predictions that are neither "yes" nor "no".
    """
    if len(predictions) != len(answers) or not answers:
        raise ConfigError(
            f"POPE needs as many predictions as answers, at least one; got {len(predictions)} and {len(answers)}"
        )
    truths = []
    for i, answer in enumerate(answers):
        truth = answer.lower().strip()
        if truth not in ("yes", "no"):
            raise ConfigError(f"POPE answer {i}: a ground-truth answer must be 'yes' or 'no', got {answer!r}")
        truths.append(truth)
    guesses = [prediction.lower().strip() for prediction in predictions]
    pairs = list(zip(guesses, truths, strict=True))
    true_positives = sum(g == "yes" and t == "yes" for g, t in pairs)
    false_positives = sum(g == "yes" and t == "no" for g, t in pairs)
    false_negatives = sum(g == "no" and t == "yes" for g, t in pairs)
    precision = true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0
    recall = true_positives / (true_positives + false_negatives) if true_positives + false_negatives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": sum(g == t for g, t in pairs) / len(pairs),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "predicted_yes_ratio": sum(g == "yes" for g in guesses) / len(pairs),
        "lmms_eval_yes_ratio": sum(t == "yes" for t in truths) / len(pairs),
        "unreadable": float(sum(g not in ("yes", "no") for g in guesses)),
    }


def scienceqa_correct(prediction: str, answer: str) -> bool:
    """lmms-eval's ``scienceqa/utils.py`` (``sqa_process_results``, LLaVA's reading): is the prediction right?

    Right if the stripped prediction, lower-cased, is the answer letter ("B" or "b"), or if it opens with an
    upper-case character and a period ("B.", "B. a cat") and that character, lower-cased, is the letter. Nothing else
    reads: "(B)", "B)", "The answer is B" and the option's text are wrong.
    """
    target = answer.strip().lower()
    text = prediction.strip()
    if text.lower() == target:
        return True
    return len(text) >= 2 and text[0].isupper() and text[1] == "." and text[0].lower() == target


def seedbench_correct(prediction: str, answer: str) -> bool:
    """lmms-eval's ``seedbench/utils.py`` (``seed_process_result``): the first character is the answer.

    The stripped prediction is cut to its first character when longer, then compared with the answer letter, both
    lower-cased and stripped: "B", "b", "B." and "B) a cat" read B, and so does "Bird"; "(B)" reads "(", and
    "The answer is B" reads "T".
    """
    text = prediction.strip()
    if len(text) > 1:
        text = text[0]
    return text.lower().strip() == answer.lower().strip()


_AI2D_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


def ai2d_correct(prediction: str, answer: str) -> bool:
    """lmms-eval's AI2D (``ai2d/utils.py`` MultiChoiceRegexFilter, then ``ai2d.yaml``'s exact_match).

    A prediction opening with an upper-case letter and a period ("B.", "B. a cat") is replaced by that letter;
    anything else stays whole. Then :func:`lmms_eval_exact_match` against the answer letter: case and punctuation
    aside, so "b", "(B)", "B)" and "b." are right too, while "B a cat", "The answer is B" and the option's text
    are not.
    """
    leading = _AI2D_LEADING_LETTER.match(prediction)
    read = leading.group(1) if leading is not None else prediction
    return lmms_eval_exact_match(read, answer) == 1.0


def mmbench_can_infer_option(answer: str) -> str | None:
    """lmms-eval's ``mmbench/mmbench_evals.py`` ``can_infer_option``: the letter an answer states, or None.

    The answer is split on whitespace. Letters are A to E whatever the number of options (it is called with its
    default ``num_choice=5``). If exactly one word is a bare letter, that letter, unless "A" is a word and there are
    more than three words ("A" is then taken for the article). Otherwise the first of these word forms that exactly
    one letter takes wins, its letter read in A..E order: "X.", "X,", "X:", "X)", "X).", "(X)", "(X).", ":X",
    ":X,", ":X.", ":X)", ":X).".
    """
    letters = "ABCDE"
    if "Failed to obtain answer via API" in answer:
        return None
    words = [word.strip() for word in answer.split()]

    def count(prefix: str, suffix: str) -> int:
        return sum(f"{prefix}{letter}{suffix}" in words for letter in letters)

    if count("", "") == 1 and not ("A" in words and len(words) > 3):
        for letter in letters:
            if letter in words:
                return letter
    forms = (
        ("", "."),
        ("", ","),
        ("", ":"),
        ("", ")"),
        ("", ")."),
        ("(", ")"),
        ("(", ")."),
        (":", ""),
        (":", ","),
        (":", "."),
        (":", ")"),
        (":", ")."),
    )
    for prefix, suffix in forms:
        if count(prefix, suffix) == 1:
            for letter in letters:
                if f"{prefix}{letter}{suffix}" in words:
                    return letter
    return None


def mmbench_can_infer_text(answer: str, choices: Sequence[str]) -> str | None:
    """lmms-eval's ``can_infer_text``: the one option (A, B, ...) whose lower-cased text occurs in the answer, or None.

    A plain substring test on the lower-cased answer: no word boundaries, and two occurring options (one inside the
    other, say "red" and "red and blue") mean no answer.
    """
    text = answer.lower()
    found = [letter for letter, choice in zip(string.ascii_uppercase, choices, strict=False) if choice.lower() in text]
    return found[0] if len(found) == 1 else None


# lmms-eval's _task_utils/mcq_extract.py: phrases after which the next valid letter is the answer, and how much each
# way of writing a letter is trusted (higher wins; among equals the later position wins).
_MCQ_PHRASES = (
    "the answer is",
    "answer is",
    "the correct answer is",
    "correct answer is",
    "the best answer is",
    "best answer is",
    "the correct option is",
    "correct option is",
    "the best option is",
    "best option is",
    "the choice is",
    "choice is",
    "the correct choice is",
    "correct choice is",
    "i choose",
    "i select",
    "i pick",
    "my answer is",
    "my choice is",
    "옵션",
    "정답은",
    "답은",
    "답:",
    "答案是",
    "答案为",
    "选",
    "答えは",
)
_MCQ_TRUST = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3}
_MCQ_SPACE_TRUST = 2


def mcq_extract_letter(response: str, letters: Sequence[str]) -> str | None:
    """lmms-eval's ``_task_utils/mcq_extract.py`` ``extract_mcq_answer`` over ``letters``: a letter, or None.

    The response is stripped, then stripped of each of , . ! ? ; : ' " in turn, and padded with a space on each
    side. Candidates, each at its last occurrence: "(X)", "X.", "X:", "X)", "X " (a letter before a space); after
    the first occurrence of each answer phrase ("the answer is", "i choose", ...), the first occurrence of each
    letter anywhere after it; the text starting with a letter not followed by a letter; the text ending with a
    letter not preceded by one. With no candidate at all, any occurrence of a letter. The most trusted kind wins
    (start, end, phrase, brackets, period, colon, right bracket, space, any occurrence), the later position among
    equals, the first found among exact ties.
    """
    if not response.strip():
        return None
    text = response.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    candidates: list[tuple[int, int, str]] = []  # (trust, position, letter), in the order found
    for form, trust in (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren")):
        for letter in letters:
            written = form.format(letter)
            if written in text:
                candidates.append((_MCQ_TRUST[trust], text.rfind(written), letter))
    for letter in letters:
        if f"{letter} " in text:
            candidates.append((_MCQ_SPACE_TRUST, text.rfind(f"{letter} "), letter))
    lowered = text.lower()
    for phrase in _MCQ_PHRASES:
        found = lowered.find(phrase)
        if found != -1:
            for letter in letters:
                position = text.find(letter, found + len(phrase))
                if position != -1:
                    candidates.append((_MCQ_TRUST["phrase"], position, letter))
    core = text.strip()
    for letter in letters:
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            candidates.append((_MCQ_TRUST["start"], 0, letter))
    for letter in letters:
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            candidates.append((_MCQ_TRUST["end"], len(text) - 1, letter))
    if not candidates:
        candidates = [(0, text.rfind(letter), letter) for letter in letters if letter in text]
    if not candidates:
        return None
    # max keeps the first of equal keys, as a stable sort in reverse order does.
    return max(candidates, key=lambda candidate: (candidate[0], candidate[1]))[2]


def mmbench_scores(records: Sequence[Mapping[str, object]], *, circular: bool) -> dict[str, float]:
    """MMBench as lmms-eval's ``mmbench_en_dev_static`` scores it (``mmbench_evals.py``, ``eval_result``).

    Each record is one variant: "index" (its question; circular variants share it), "prediction", "choices" (this
    variant's option texts) and "answer" (its letter). An answer is read by ``can_infer_option``, else
    ``can_infer_text`` (:func:`mmbench_can_infer_option`, :func:`mmbench_can_infer_text`); ``mmbench_en_dev`` asks
    a GPT judge about answers neither reads. We run no judge: like ``mmbench_en_dev_static``, such an answer goes to
    :func:`mcq_extract_letter` over the question's letters, and one that stays unread counts as wrong. A question is
    right when every variant present is right, so with ``circular`` (all variants) this is CircularEval and
    without it (originals only) plain accuracy: ``circular_accuracy`` or ``accuracy``. Beside it, ``judge_needed``
    counts the answers the rules could not read (those ``mmbench_en_dev`` would send to the judge) and ``unreadable``
    those the static extractor could not read either (scored wrong here).
    """
    if not records:
        raise ConfigError("MMBench needs at least one record to score")
    question_right: dict[Hashable, bool] = {}
    judge_needed = unreadable = 0
    for i, record in enumerate(records):
        where = f"MMBench record {i}"
        question = _id_field(record, "index", where)
        options = _option_texts(record, where)
        letters = _option_letters(options)
        letter = _answer_letter(_text_field(record, "answer", where), letters, where)
        prediction = _text_field(record, "prediction", where).strip()
        read = mmbench_can_infer_option(prediction) or mmbench_can_infer_text(prediction, options)
        if read is None:
            judge_needed += 1
            read = mcq_extract_letter(prediction, letters)
            unreadable += read is None
        question_right[question] = question_right.get(question, True) and read == letter
    accuracy = sum(question_right.values()) / len(question_right)
    return {
        "circular_accuracy" if circular else "accuracy": accuracy,
        "judge_needed": float(judge_needed),
        "unreadable": float(unreadable),
    }


# ---------------------------------------------------------------------------------------------------------------------
# The llava protocol: the LLaVA repository's evaluation scripts at LLAVA_REVISION
# ---------------------------------------------------------------------------------------------------------------------
# LLaVA's model_vqa_loader.py and model_vqa_science.py strip every generation before these rules see it.


def llava_pope_reading(prediction: str) -> str:
    """LLaVA's ``llava/eval/eval_pope.py``: "no" if the first sentence has the word "No", "no" or "not", else "yes".

    Only the text before the first period counts; commas are deleted; words are split on single spaces, case
    kept. Every other answer is "yes": "Nope", "NO", "Yes", "" and "I cannot tell" all read yes.
    """
    text = prediction.split(".", 1)[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def llava_pope_metrics(predictions: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """``eval_pope.py``'s accuracy, precision, recall, F1 and yes-ratio of one split, "yes" the positive class.

    Predictions are read by :func:`llava_pope_reading`, answers "no" are negative and all others positive.
    ``yes_ratio`` is the share of "yes" readings. Where the script would divide by zero (no "yes" reading, say), the
    ratio is 0 here.
    """
    if len(predictions) != len(answers) or not answers:
        raise ConfigError(
            f"POPE needs as many predictions as answers, at least one; got {len(predictions)} and {len(answers)}"
        )
    guesses = [llava_pope_reading(prediction) == "yes" for prediction in predictions]
    truths = [answer != "no" for answer in answers]
    pairs = list(zip(guesses, truths, strict=True))
    true_positives = sum(g and t for g, t in pairs)
    false_positives = sum(g and not t for g, t in pairs)
    false_negatives = sum(not g and t for g, t in pairs)
    true_negatives = len(pairs) - true_positives - false_positives - false_negatives
    precision = true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0
    recall = true_positives / (true_positives + false_negatives) if true_positives + false_negatives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (true_positives + true_negatives) / len(pairs),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "yes_ratio": sum(guesses) / len(pairs),
    }


_LLAVA_SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")  # a list there: "in" tests equality, not substrings
_LLAVA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def llava_scienceqa_letter(prediction: str, option_count: int) -> str | None:
    """LLaVA's ``llava/eval/eval_science_qa.py``: the option letter a prediction names, or None (its "FAILED").

    The whole prediction one of A..E; else "X. " opening it (X in A..E); else exactly one match of
    ``The answer is ([A-Z]).`` (the final "." matches any character). A letter beyond the question's options
    counts as no answer (the script's index -1).
    """
    letters = _LLAVA_SCIENCEQA_OPTIONS
    if prediction in letters:
        read: str | None = prediction
    elif len(prediction) >= 3 and prediction[0] in letters and prediction[1:3] == ". ":
        read = prediction[0]
    else:
        found = _LLAVA_ANSWER_IS.findall(prediction)
        read = found[0] if len(found) == 1 else None
    return read if read is not None and read in letters[:option_count] else None
