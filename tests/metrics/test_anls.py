"""ANLS against hand-worked cases: the RRC evaluation script (default) and the paper's definition."""

from __future__ import annotations

import pytest

from paligemma_cli.errors import PgmError
from paligemma_cli.metrics.anls import anls, anls_score, mean_by_label


def paper(prediction, answers, threshold=0.5):
    return anls_score(prediction, answers, threshold, variant="paper")


# ----- the RRC server script (the default) --------------------------------------------------------

@pytest.mark.parametrize("gold, prediction, server, by_paper", [
    # Issue #19's worked cases. One substitution in two characters: NL = 1/2 exactly, and the
    # server zeroes only a score *below* 0.5, so it keeps 0.5; the paper zeroes NL >= 0.5.
    ("ln", "sn", 0.5, 0.0),
    # Distance 1 on the normalised "qt"/"yt", divided by len(" yt  ") = 5 of the raw prediction.
    ("qt", " yt  ", 0.8, 0.0),
    # Distance 2 ("utn" for "u"), divided by the raw prediction's 24 characters (paper: 22).
    ("Philip Morris U.S.A.", " Philip Morris Utn.S.A.\t", 1 - 2 / 24, 1 - 2 / 22),
    # "ß".upper() is "SS": the divisor is 2 on the server, 1 in the paper (NL 1 -> 0).
    ("ß", "s", 0.5, 0.0),
])
def test_the_issues_worked_cases(gold, prediction, server, by_paper):
    assert anls_score(prediction, [gold]) == pytest.approx(server, abs=1e-12)
    assert paper(prediction, [gold]) == pytest.approx(by_paper, abs=1e-12)


def test_worked_cases_through_the_data_set_mean():
    references = {1: ["ln"], 2: ["qt"], 3: ["Philip Morris U.S.A."]}
    predictions = {1: "sn", 2: " yt  ", 3: " Philip Morris Utn.S.A.\t"}
    assert anls(predictions, references)["anls"] == pytest.approx((0.5 + 0.8 + 1 - 2 / 24) / 3)
    assert anls(predictions, references, variant="paper")["anls"] == pytest.approx((1 - 2 / 22) / 3)


def test_exact_case_and_whitespace():
    assert anls_score("Denver Broncos", ["Denver Broncos"]) == 1.0
    # Distance 0 after normalising, whatever the divisor.
    assert anls_score("  DENVER \t broncos\n", ["denver Broncos"]) == 1.0


def test_partial_match_divides_by_the_raw_lengths():
    # "abc" -> "abcd": 1 insertion over 4 -> 0.75 in both.
    assert anls_score("abc", ["abcd"]) == pytest.approx(0.75) == paper("abc", ["abcd"])
    # 5 substitutions over 11 characters: NL 5/11, just below 0.5 -> 6/11.
    assert anls_score("abcdefghijk", ["abcdefvwxyz"]) == pytest.approx(6 / 11)
    # Two trailing spaces on the gold answer lengthen the server's divisor to 6: NL 1/6.
    assert anls_score("abcd", ["abcx  "]) == pytest.approx(5 / 6)
    assert paper("abcd", ["abcx  "]) == pytest.approx(3 / 4)


def test_the_threshold_compares_the_similarity_on_the_server():
    # NL 3/7: similarity 4/7 ~ 0.571.
    assert anls_score("abcdefg", ["abcdxyz"]) == pytest.approx(4 / 7)
    # The server zeroes a similarity below its threshold; the paper a distance at or above its own.
    assert anls_score("abcdefg", ["abcdxyz"], threshold=0.6) == 0.0
    assert anls_score("abcdefg", ["abcdxyz"], threshold=0.4) == pytest.approx(4 / 7)
    assert paper("abcdefg", ["abcdxyz"], threshold=0.4) == 0.0
    assert paper("abcdefg", ["abcdxyz"], threshold=0.6) == pytest.approx(4 / 7)
    # Two substitutions in four: 0.5 kept by the server, zeroed by the paper.
    assert anls_score("abcd", ["abxy"]) == 0.5 and paper("abcd", ["abxy"]) == 0.0


def test_the_best_answer_counts():
    # NL 3/7 against the first answer, 1/7 against the second: 1 - min = 6/7.
    assert anls_score("abcdefg", ["abcdxyz", "abcdefx"]) == pytest.approx(6 / 7)
    assert anls_score("abcdefg", ["zzzzzzz", "ABCDEFG"]) == 1.0
    assert paper("abcdefg", ["abcdxyz", "abcdefx"]) == pytest.approx(6 / 7)


def test_empty_strings():
    assert anls_score("", [""]) == 1.0  # divisor 0: NL 0
    # Whitespace-only normalises to "", distance 0 over the raw 3 characters.
    assert anls_score("   ", [""]) == 1.0 == paper("   ", [""])
    assert anls_score("", ["abc"]) == 0.0  # NL = 3/3
    assert anls_score("abc", []) == 0.0  # the RRC script stops with an error here; pgm scores 0


def test_unknown_variant_is_a_user_error():
    with pytest.raises(PgmError, match="Unknown ANLS variant 'server'"):
        anls({1: "a"}, {1: ["a"]}, variant="server")
    with pytest.raises(PgmError, match="Unknown ANLS variant"):
        anls_score("a", ["a"], variant="")


def test_anls_averages_over_references_and_scores_missing_as_zero():
    references = {1: ["abcd"], "b": ["yes", "Yes sir"], 3: ["x"]}
    predictions = {1: "abc", "b": "YES", "extra": "ignored"}
    result = anls(predictions, references)
    assert result["per_question"] == pytest.approx({1: 0.75, "b": 1.0, 3: 0.0})
    assert result["anls"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert anls({}, {})["anls"] == 0.0


# ----- breakdowns, as the RRC script counts them --------------------------------------------------

def test_a_question_counts_once_in_each_type_it_lists():
    references = {1: ["abcd"], 2: ["yes"], 3: ["ln"], 4: ["x"]}
    predictions = {1: "abc", 2: "yes", 3: "sn", 4: "y"}  # 0.75, 1.0, 0.5, 0.0
    categories = {
        "answer_type": {1: ["image span"], 2: ["question span", "image span"], 3: ["non span"]},
        "evidence": {1: ["table/list", "textual"], 2: ["textual"], 3: [], 4: ["figure"]},
    }
    result = anls(predictions, references, categories=categories)
    # Question 4 lists no answer type: it is in no answer-type mean, but in the overall one.
    assert result["per_answer_type"] == pytest.approx(
        {"image span": (0.75 + 1.0) / 2, "question span": 1.0, "non span": 0.5})
    assert result["per_evidence"] == pytest.approx({"table/list": 0.75, "textual": (0.75 + 1.0) / 2, "figure": 0.0})
    assert result["anls"] == pytest.approx((0.75 + 1.0 + 0.5 + 0.0) / 4)
    assert list(result["per_answer_type"]) == ["image span", "question span", "non span"]  # first-seen order


def test_mean_by_label_counts_a_repeated_label_twice():
    # The RRC loop adds a question once per entry of its list, repeats included.
    assert mean_by_label({1: 1.0, 2: 0.0}, {1: ["a", "a"], 2: ["a"]}) == pytest.approx({"a": 2 / 3})
