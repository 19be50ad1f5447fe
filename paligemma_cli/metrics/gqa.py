"""GQA metrics as the official `eval.py` (gqadataset.org, v1.4) computes them.

Answers are compared with plain string equality: the official script normalises nothing
(no lower-casing, no stripping, no article removal). Clean decoded text before calling.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping

from paligemma_cli.errors import PgmError

# eval.py `belongs`: for "what do X and Y have in common" questions the valid/plausible sets
# in the choices file are replaced by these three answers.
_COMMON_ANSWERS = ("color", "material", "shape")


def _avg(values: list) -> float:
    # eval.py's avg(): an empty list averages to 0 (so e.g. "Open: 0.00%" with no open questions).
    return float(sum(values)) / len(values) if values else 0.0


def _belongs(answer, group, question: Mapping) -> bool:
    if "Common" in question.get("types", {}).get("detailed", ""):
        group = _COMMON_ANSWERS
    return answer in group


def _chi_square(gold: Mapping, predicted: Mapping) -> float:
    # eval.py chiSquare: per answer group, sum over *gold* answers of (observed - expected)^2 /
    # expected (predicted answers the gold never uses add nothing), then the groups are
    # averaged weighted by their number of questions.
    sum_score, sum_overall = 0.0, 0
    for group, gold_counts in gold.items():
        pred_counts = predicted.get(group, {})
        score, overall = 0.0, 0
        for answer, expected in gold_counts.items():
            observed = pred_counts.get(answer, 0)
            score += float(observed - expected) ** 2 / expected
            overall += expected
        sum_score += score * overall
        sum_overall += overall
    return sum_score / sum_overall


def steps_number(question: Mapping) -> int:
    """eval.py's number of reasoning steps of a question (getStepsNum over its `semantic` program).

    A step counts unless its "operation: argument" text contains "exist", "query: name" or
    "choose name" (a substring test, as there: "select: coexistence" does not count either).
    """
    steps = 0
    for step in question["semantic"]:
        text = f"{step['operation']}: {step['argument']}"
        if "exist" not in text and "query: name" not in text and "choose name" not in text:
            steps += 1
    return steps


def words_number(question: Mapping) -> int:
    """eval.py's question length: ``len(question["question"].split())``, no capping."""
    return len(question["question"].split())


class _Tally:
    """eval.py's `scores` and `dist` structures, filled one balanced question at a time."""

    def __init__(self) -> None:
        self.accuracy: list = []
        self.binary: list = []
        self.open: list = []
        self.consistency: list = []
        self.validity: list = []
        self.plausibility: list = []
        self.per: dict[str, dict] = {name: defaultdict(list) for name in _BREAKDOWNS}
        self.gold_dist: dict = defaultdict(lambda: defaultdict(int))
        self.pred_dist: dict = defaultdict(lambda: defaultdict(int))
        self.entailed_missing = 0

    def add_accuracy(self, question: Mapping, score: float) -> None:
        self.accuracy.append(score)
        types = question.get("types", {})
        structural, semantic = types.get("structural"), types.get("semantic")
        (self.open if structural == "query" else self.binary).append(score)
        per = self.per
        if structural is not None:
            per["per_structural_type"][structural].append(score)
        if semantic is not None:
            per["per_semantic_type"][semantic].append(score)
        if "semantic" in question:
            per["per_steps_number"][steps_number(question)].append(score)
        if "question" in question:
            per["per_words_number"][words_number(question)].append(score)

    def add_choices(self, qid, question: Mapping, predicted, choices: Mapping) -> None:
        if qid not in choices:
            raise PgmError(
                f"The GQA choices file has no entry for question {qid!r}.",
                "Pass the choices file of the same split as the questions (e.g. val_choices.json with val questions).",
            )
        self.validity.append(1.0 if _belongs(predicted, choices[qid]["valid"], question) else 0.0)
        self.plausibility.append(1.0 if _belongs(predicted, choices[qid]["plausible"], question) else 0.0)

    def add_distribution(self, question: Mapping, gold, predicted) -> None:
        global_group = question.get("groups", {}).get("global")
        if global_group is not None:
            self.gold_dist[global_group][gold] += 1
            if predicted is not None:
                self.pred_dist[global_group][predicted] += 1

    def add_consistency(self, qid, question: Mapping, predictions: Mapping, questions: Mapping) -> None:
        """Called for a correctly answered question: accuracy over its entailed ones (not itself)."""
        entailed = [eid for eid in question.get("entailed", ()) if eid != qid]
        known = [eid for eid in entailed if eid in questions]
        self.entailed_missing += len(entailed) - len(known)
        if known:
            self.consistency.append(
                _avg([1.0 if predictions.get(eid) == questions[eid]["answer"] else 0.0 for eid in known]))


# The per-type breakdowns, as eval.py's detailedMetrics (structural, semantic, steps, words).
_BREAKDOWNS = ("per_structural_type", "per_semantic_type", "per_steps_number", "per_words_number")


def gqa_metrics(
    predictions: Mapping[Hashable, str],
    questions: Mapping[Hashable, Mapping],
    *,
    choices: Mapping[Hashable, Mapping] | None = None,
) -> dict:
    """Official GQA metrics.

    `questions` is the contents of ``<split>_balanced_questions.json`` or
    ``<split>_all_questions.json``; `choices` the contents of ``<split>_choices.json`` (val and
    train only). Scores are over balanced questions (``isBalanced``; a missing key counts as
    balanced); questions missing from `predictions` count as wrong.

    Returns, in percent (0-100) as eval.py prints them:
      - ``accuracy``; ``binary`` and ``open`` (open = structural type "query", else binary);
      - ``per_structural_type``, ``per_semantic_type``, ``per_steps_number`` (reasoning steps of
        the `semantic` program, see `steps_number`) and ``per_words_number`` (``len(question.split())``),
        keyed and sorted as eval.py prints them (steps and words are ints; a question without
        `semantic` or `question` is left out of that breakdown);
      - ``consistency``: for each correctly answered balanced question with entailed
        questions (other than itself), the accuracy over those, averaged (0 when none
        qualify, as eval.py). Official numbers need the *all* questions file and predictions
        for all of it: entailed ids absent from `questions` are skipped and counted in
        ``entailed_missing``;
      - ``validity`` and ``plausibility`` (only when `choices` is given);
      - ``distribution``: the chi-square statistic of predicted vs gold answer counts per
        ``groups.global`` answer group, divided by 100 as eval.py does (a statistic, not a
        percentage; lower is better; omitted when no question has a global group);
      - ``per_question``: ``{qid: 0.0 or 100.0}`` for the balanced questions.
    """
    tally = _Tally()
    per_question = {}
    for qid, question in questions.items():
        if not question.get("isBalanced", True):
            continue
        gold = question["answer"]
        predicted = predictions.get(qid)
        correct = predicted == gold
        score = 1.0 if correct else 0.0
        per_question[qid] = 100 * score
        tally.add_accuracy(question, score)
        if choices is not None:
            tally.add_choices(qid, question, predicted, choices)
        tally.add_distribution(question, gold, predicted)
        if correct:
            tally.add_consistency(qid, question, predictions, questions)
    return _summary(tally, per_question, with_choices=choices is not None)


def _summary(tally: _Tally, per_question: dict, *, with_choices: bool) -> dict:
    result = {
        "accuracy": 100 * _avg(tally.accuracy),
        "binary": 100 * _avg(tally.binary),
        "open": 100 * _avg(tally.open),
        "consistency": 100 * _avg(tally.consistency),
        **{name: {t: 100 * _avg(scores) for t, scores in sorted(tally.per[name].items())} for name in _BREAKDOWNS},
        "entailed_missing": tally.entailed_missing,
        "per_question": per_question,
    }
    if with_choices:
        result["validity"] = 100 * _avg(tally.validity)
        result["plausibility"] = 100 * _avg(tally.plausibility)
    if tally.gold_dist:
        result["distribution"] = _chi_square(tally.gold_dist, tally.pred_dist) / 100
    return result
