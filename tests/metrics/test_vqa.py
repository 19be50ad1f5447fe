"""VQA accuracy against hand-worked cases from the official vqaEval.py (GT-Vision-Lab/VQA master)."""

from __future__ import annotations

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A listed character touching no space becomes a space...
        ("red-white", "red white"),
        ("hello,world", "hello world"),
        ("yes!", "yes"),
        ("(cat)", "cat"),
        # ...and is deleted where it touches a space ("a, b": ", " occurs in the text).
        ("left, right", "left right"),
        ("dog ?", "dog"),
        # The test is per character over the whole text: "-" touches a space somewhere, so
        # every "-" is deleted, even the one inside "t-shirt".
        ("t-shirt - blue", "tshirt blue"),
        # A digit,digit comma anywhere deletes every listed character, not only that comma.
        ("1,000", "1000"),
        ("1,000-2,000", "10002000"),
        # Apostrophe and colon are not in the current list (they were in the old script).
        ("man's", "man's"),
        ("10:30", "10:30"),
    ],
)
def test_punctuation_rule(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2.5", "2.5"),  # followed by a digit: kept
        (".5", ".5"),
        ("yes.", "yes"),  # not followed by a digit: removed
        ("3.", "3"),
        ("mr.smith", "mrsmith"),  # removed, not replaced by a space
        # The official call passes re.UNICODE (== 32) as `count`: only 32 periods go.
        ("x" + "." * 33, "x."),
    ],
)
def test_period_rule(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("zero", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # the table stops at ten
        ("the dog", "dog"),
        ("A Cat", "cat"),
        ("an apple", "apple"),
        ("theater", "theater"),  # whole words only
        ("one of the two", "1 of 2"),
    ],
)
def test_number_words_and_articles(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dont", "don't"),
        ("Dont know", "don't know"),
        ("whats", "what's"),
        ("oclock", "o'clock"),
        ("Im", "im"),  # the table's "Im" key has a capital and never matches lower-cased words
        ("somebody'd", "somebodyd"),  # the official table maps this one backwards
    ],
)
def test_contractions(text, expected):
    assert normalize_answer(text) == expected


# ----- Unicode, as vqaEval.py behaves under Python 3 (str patterns: `\\d` is any decimal digit) -------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A period followed by an Arabic-Indic, Devanagari or fullwidth digit is kept...
        ("1.\u0665", "1.\u0665"),
        ("\u0967.\u096b", "\u0967.\u096b"),
        ("\uff15.\uff15", "\uff15.\uff15"),
        # ...but a superscript two is no decimal digit (category No, though str.isdigit() says yes).
        ("2.\u00b2", "2\u00b2"),
        # A digit,digit comma in Arabic-Indic digits deletes every listed character.
        ("\u0661,\u0660\u0660\u0660-\u0662", "\u0661\u0660\u0660\u0660\u0662"),
        # str.lower is the full Unicode mapping: capital I with dot becomes i + combining dot.
        ("\u0130", "i\u0307"),
        # str.split splits on every Unicode space (no-break, ideographic, information separator).
        ("red\u00a0car", "red car"),
        ("the\u3000dog", "dog"),
        ("two\x1fcats", "2 cats"),
    ],
)
def test_unicode_details(text, expected):
    assert normalize_answer(text) == expected


def test_the_issues_unicode_digit_case():
    # Annotators disagree, so both sides are processed. "1.٥" keeps its period (followed by a
    # digit under Python 3), so the prediction "1٥" matches one annotator: 0.3, not 1.0.
    answers = ["1.\u0665"] * 8 + ["1\u0665", "1.5"]
    assert vqa_score("1\u0665", answers) == pytest.approx(0.3)
    assert vqa_score("1.\u0665", answers) == 1.0


def test_unicode_whitespace_is_stripped_even_when_annotators_agree():
    # The cleaning step's str.strip() strips Unicode spaces; nothing else is processed.
    assert vqa_score("\u3000yes\u00a0", TEN_YES) == 1.0
    assert vqa_score("yes\u00a0no", ["yes no"] * 10) == 0.0  # inner spaces are not collapsed


def test_whitespace_is_cleaned_first():
    assert normalize_answer("\tred \n car  ") == "red car"


TEN_YES = ["yes"] * 10


def test_unanimous_answers_leave_the_prediction_unprocessed():
    # Official master: with all 10 answers identical neither side is processed, so "Yes" is not
    # "yes" (checked by reading vqaEval.py: the processing sits under `len(set(gtAnswers)) > 1`).
    assert vqa_score("Yes", TEN_YES) == 0.0
    assert vqa_score("yes.", TEN_YES) == 0.0
    # ...but newlines/tabs and outer spaces are always cleaned.
    assert vqa_score(" yes\n", TEN_YES) == 1.0
    # The EvalAI-server variant normalises the prediction regardless.
    assert vqa_score("Yes", TEN_YES, always_normalize=True) == 1.0
    assert vqa_score("yes.", TEN_YES, always_normalize=True) == 1.0


SPLIT = ["red"] * 3 + ["blue"] * 2 + ["green"] * 4 + ["pink"]


def test_split_annotators_leave_one_out_mean():
    # "red" matches 3 of 10. Leaving out one of the 3 "red" annotators leaves 2 matches
    # (min(1, 2/3) = 2/3); leaving out any of the other 7 leaves 3 (min(1, 3/3) = 1).
    # Mean: (3 * 2/3 + 7 * 1) / 10 = 9/10.
    assert vqa_score("red", SPLIT) == pytest.approx(0.9)
    # "blue" matches 2: (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 0.6.
    assert vqa_score("blue", SPLIT) == pytest.approx(0.6)
    # "pink" matches 1: (1 * 0 + 9 * 1/3) / 10 = 0.3.
    assert vqa_score("pink", SPLIT) == pytest.approx(0.3)
    # "green" matches 4: every subset keeps >= 3 matches.
    assert vqa_score("green", SPLIT) == 1.0
    assert vqa_score("purple", SPLIT) == 0.0


def test_split_annotators_normalise_both_sides():
    # Not unanimous, so "Red." -> "red", and ground truths are processed too ("the green" -> "green").
    assert vqa_score("Red.", SPLIT) == pytest.approx(0.9)
    answers = ["the green"] * 4 + ["red"] * 6
    assert vqa_score("GREEN!", answers) == 1.0
    assert vqa_score("two", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)


def test_vqa_accuracy_averages_per_question_and_per_answer_type():
    references = {
        1: {"answers": TEN_YES, "answer_type": "yes/no"},
        2: {"answers": ["no"] * 10, "answer_type": "yes/no"},
        "q3": {"answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number"},
        4: {"answers": SPLIT},  # no answer type: counted overall only
        5: {"answers": SPLIT, "answer_type": "other"},  # no prediction: scores 0
    }
    predictions = {1: "yes", 2: "yes", "q3": "2", 4: "red", 999: "ignored"}
    result = vqa_accuracy(predictions, references)
    # Per question: 1, 0, 0.6 (2 of 10 match), 0.9 (3 of 10), 0 (missing).
    assert result["per_question"] == pytest.approx({1: 100.0, 2: 0.0, "q3": 60.0, 4: 90.0, 5: 0.0})
    assert result["accuracy"] == pytest.approx(100 * (1 + 0 + 0.6 + 0.9 + 0) / 5)
    assert result["per_answer_type"] == pytest.approx({"yes/no": 50.0, "number": 60.0, "other": 0.0})
    assert result["per_question_type"] == {}  # no question types given


def test_per_question_type_is_keyed_by_the_annotations_question_type():
    references = {
        1: {"answers": TEN_YES, "answer_type": "yes/no", "question_type": "is the"},
        2: {"answers": ["no"] * 10, "answer_type": "yes/no", "question_type": "is the"},
        3: {"answers": SPLIT, "answer_type": "other", "question_type": "what color is the"},
        4: {"answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number", "question_type": "how many"},
        5: {"answers": SPLIT, "answer_type": "other"},  # no question type: not in that breakdown
    }
    result = vqa_accuracy({1: "yes", 2: "yes", 3: "blue", 4: "3", 5: "red"}, references)
    assert result["per_question_type"] == pytest.approx({"is the": 50.0, "what color is the": 60.0, "how many": 100.0})
    assert list(result["per_question_type"]) == ["is the", "what color is the", "how many"]  # first-seen order
    assert result["per_answer_type"] == pytest.approx({"yes/no": 50.0, "other": 75.0, "number": 100.0})


def test_vqa_accuracy_always_normalize_is_passed_through():
    references = {1: {"answers": TEN_YES, "answer_type": "yes/no"}}
    assert vqa_accuracy({1: "Yes"}, references)["accuracy"] == 0.0
    assert vqa_accuracy({1: "Yes"}, references, always_normalize=True)["accuracy"] == 100.0


def test_no_ground_truth_answers_is_a_user_error():
    with pytest.raises(PgmError, match="no ground-truth answers"):
        vqa_accuracy({1: "yes"}, {1: {"answers": []}})
    with pytest.raises(PgmError):
        vqa_score("yes", [])
