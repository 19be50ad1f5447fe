"""GQA metrics on hand-made question sets, worked out from the official eval.py."""

from __future__ import annotations

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.metrics.gqa import gqa_metrics


def _q(answer, structural, *, balanced=True, entailed=(), detailed="x", group=None, semantic="attr"):
    q = {
        "answer": answer,
        "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
        "entailed": list(entailed),
        "groups": {"global": group, "local": None},
    }
    if balanced is not None:
        q["isBalanced"] = balanced
    return q


QUESTIONS = {
    # correct; entailed q2 (correct) and q3 (wrong), itself excluded -> consistency 1/2
    "q1": _q("red", "query", entailed=["q2", "q3", "q1"]),
    "q2": _q("yes", "verify"),  # correct, no entailed questions
    "q3": _q("no", "logical", balanced=False),  # unbalanced: not scored
    # wrong (so its entailed questions are not looked at); a "...Common" question
    "q4": _q("color", "query", entailed=["q2"], detailed="materialCommon"),
    "q5": _q("yes", "compare", balanced=None),  # no isBalanced key: balanced; no prediction
    # correct; entailed q2 (correct) and an id absent from the questions -> 1/1, 1 missing
    "q6": _q("no", "verify", entailed=["q2", "q404"]),
}
PREDICTIONS = {"q1": "red", "q2": "yes", "q3": "yes", "q4": "material", "q6": "no", "zzz": "x"}
CHOICES = {
    "q1": {"valid": ["red", "blue"], "plausible": ["red"]},
    "q2": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "q3": {"valid": ["yes", "no"], "plausible": ["no"]},
    # ignored: for "Common" questions eval.py uses ["color", "material", "shape"] instead
    "q4": {"valid": ["cat"], "plausible": ["cat"]},
    "q5": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "q6": {"valid": ["yes", "no"], "plausible": ["yes"]},
}


def test_accuracy_binary_open_and_consistency():
    result = gqa_metrics(PREDICTIONS, QUESTIONS)
    # Balanced: q1 q2 q4 q5 q6; correct: q1 q2 q6.
    assert result["accuracy"] == pytest.approx(100 * 3 / 5)
    assert result["open"] == pytest.approx(100 * 1 / 2)  # query: q1 right, q4 wrong
    assert result["binary"] == pytest.approx(100 * 2 / 3)  # q2 right, q5 missing, q6 right
    # Correct questions with entailed ones: q1 -> 1/2, q6 -> 1/1 (q404 unknown, skipped).
    assert result["consistency"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert result["entailed_missing"] == 1
    assert result["per_question"] == {"q1": 100.0, "q2": 100.0, "q4": 0.0, "q5": 0.0, "q6": 100.0}
    assert result["per_structural_type"] == pytest.approx(
        {"query": 50.0, "verify": 100.0, "compare": 0.0}
    )
    assert "validity" not in result and "plausibility" not in result
    assert "distribution" not in result  # no question has a global group


def test_validity_and_plausibility_from_choices():
    result = gqa_metrics(PREDICTIONS, QUESTIONS, choices=CHOICES)
    # valid: q1 yes, q2 yes, q4 yes ("material" is a Common answer), q5 no (missing), q6 yes
    assert result["validity"] == pytest.approx(100 * 4 / 5)
    # plausible: q1 yes, q2 yes, q4 yes, q5 no, q6 no ("no" not in ["yes"])
    assert result["plausibility"] == pytest.approx(100 * 3 / 5)


def test_comparison_is_exact():
    questions = {"a": _q("red", "query"), "b": _q("red", "query"), "c": _q("red", "query")}
    result = gqa_metrics({"a": "Red", "b": "red ", "c": "red"}, questions)
    assert result["per_question"] == {"a": 0.0, "b": 0.0, "c": 100.0}


def test_distribution_is_the_weighted_chi_square_over_global_groups():
    questions = {
        "a": _q("red", "query", group="g1"),
        "b": _q("red", "query", group="g1"),
        "c": _q("blue", "query", group="g1"),
        "d": _q("green", "query", group="g1"),
        "e": _q("yes", "verify", group="g2"),
        "f": _q("yes", "verify", group=None),  # no group: not in the histograms
        "g": _q("yes", "verify", group="g2", balanced=False),  # unbalanced: ignored
    }
    predictions = {"a": "red", "b": "blue", "c": "blue", "d": "blue", "e": "no", "g": "yes"}
    result = gqa_metrics(predictions, questions)
    # g1 gold red 2, blue 1, green 1; predicted red 1, blue 3:
    #   (1-2)^2/2 + (3-1)^2/1 + (0-1)^2/1 = 0.5 + 4 + 1 = 5.5 over 4 questions.
    # g2 gold yes 1, predicted yes 0: (0-1)^2/1 = 1 over 1 question ("no" is not a gold answer).
    # Weighted by questions: (5.5 * 4 + 1 * 1) / 5 = 4.6, and eval.py divides by 100.
    assert result["distribution"] == pytest.approx(0.046)


def test_choices_from_another_split_is_a_user_error():
    with pytest.raises(PgmError, match="no entry for question"):
        gqa_metrics(PREDICTIONS, QUESTIONS, choices={"q1": CHOICES["q1"]})


def _step(operation, argument):
    return {"operation": operation, "dependencies": [], "argument": argument}


def test_steps_number_counts_as_eval_py():
    from paligemma_cli.metrics.gqa import steps_number, words_number

    # "query: name" is the final look-up, not a reasoning step: 2.
    assert steps_number({"semantic": [_step("select", "table (5)"), _step("relate", "_,on,s (12)"),
                                      _step("query", "name")]}) == 2
    # "query: color" does count; so does "verify color: red": 3.
    assert steps_number({"semantic": [_step("select", "shirt (3)"), _step("verify color", "red"),
                                      _step("query", "color")]}) == 3
    # eval.py tests substrings of "operation: argument": an "exist" anywhere drops the step,
    # even inside an object's name, and so does any "choose name" operation.
    assert steps_number({"semantic": [_step("select", "coexistence (4)"), _step("exist", "?"),
                                      _step("choose name", "cat|dog")]}) == 0
    assert steps_number({"semantic": []}) == 0
    # Words: str.split(), so runs of any whitespace separate, and nothing is capped.
    assert words_number({"question": "Is the man  wearing\ta hat?"}) == 6
    assert words_number({"question": " ".join(["word"] * 40)}) == 40


def test_accuracy_per_steps_and_words_number():
    def q(answer, steps, words, **kw):
        question = _q(answer, "query", **kw)
        question["semantic"] = [_step("select", f"thing ({i})") for i in range(steps)] + [_step("query", "name")]
        question["question"] = " ".join(["w"] * words)
        return question

    questions = {"a": q("red", 1, 5), "b": q("blue", 1, 7), "c": q("cat", 3, 5), "d": q("dog", 12, 20),
                 "e": q("x", 3, 5, balanced=False),  # unbalanced: in no breakdown
                 "f": _q("yes", "verify")}  # no program and no question text: in neither breakdown
    result = gqa_metrics({"a": "red", "b": "no", "c": "cat", "d": "cat", "e": "x", "f": "yes"}, questions)
    assert result["per_steps_number"] == {1: 50.0, 3: 100.0, 12: 0.0}
    assert result["per_words_number"] == {5: 100.0, 7: 0.0, 20: 0.0}
    assert list(result["per_steps_number"]) == [1, 3, 12]  # sorted, as eval.py prints them
    assert result["accuracy"] == pytest.approx(100 * 3 / 5)
