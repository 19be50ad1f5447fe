"""ANLS against hand-worked cases from its definition (Biten et al. 2019; DocVQA)."""

from __future__ import annotations

import pytest

from paligemma_cli.metrics.anls import anls, anls_score


def test_exact_match_scores_one():
    assert anls_score("Denver Broncos", ["Denver Broncos"]) == 1.0


def test_case_and_whitespace_do_not_count():
    assert anls_score("  DENVER   broncos\n", ["denver Broncos"]) == 1.0


def test_partial_match_scores_one_minus_nl():
    # "abc" -> "abcd": 1 insertion, longest 4 -> NL 0.25.
    assert anls_score("abc", ["abcd"]) == pytest.approx(0.75)
    # 5 substitutions over 11 characters: NL 5/11 ~ 0.4545, just below 0.5 -> 6/11.
    assert anls_score("abcdefghijk", ["abcdefvwxyz"]) == pytest.approx(6 / 11)


def test_nl_at_the_threshold_scores_zero():
    # One substitution in two characters: NL is exactly 0.5, and the rule is NL < 0.5.
    assert anls_score("ab", ["ac"]) == 0.0
    assert anls_score("abcd", ["abxy"]) == 0.0
    # A stricter threshold cuts NL 3/7 too.
    assert anls_score("abcdefg", ["abcdxyz"]) == pytest.approx(4 / 7)
    assert anls_score("abcdefg", ["abcdxyz"], threshold=0.4) == 0.0


def test_best_answer_counts():
    # NL 3/7 against the first answer, 1/7 against the second: the max is 6/7.
    assert anls_score("abcdefg", ["abcdxyz", "abcdefx"]) == pytest.approx(6 / 7)
    assert anls_score("abcdefg", ["zzzzzzz", "ABCDEFG"]) == 1.0


def test_empty_strings():
    assert anls_score("", [""]) == 1.0
    assert anls_score("   ", [""]) == 1.0  # whitespace-only normalises to empty
    assert anls_score("", ["abc"]) == 0.0  # NL = 3/3
    assert anls_score("abc", []) == 0.0


def test_anls_averages_over_references_and_scores_missing_as_zero():
    references = {1: ["abcd"], "b": ["yes", "Yes sir"], 3: ["x"]}
    predictions = {1: "abc", "b": "YES", "extra": "ignored"}
    result = anls(predictions, references)
    assert result["per_question"] == pytest.approx({1: 0.75, "b": 1.0, 3: 0.0})
    assert result["anls"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert anls({}, {})["anls"] == 0.0
