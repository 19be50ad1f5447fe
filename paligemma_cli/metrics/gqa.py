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
        ``per_structural_type`` and ``per_semantic_type``;
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
    accuracy, binary, open_, consistency = [], [], [], []
    validity, plausibility = [], []
    by_structural: dict = defaultdict(list)
    by_semantic: dict = defaultdict(list)
    gold_dist: dict = defaultdict(lambda: defaultdict(int))
    pred_dist: dict = defaultdict(lambda: defaultdict(int))
    per_question = {}
    entailed_missing = 0

    for qid, question in questions.items():
        if not question.get("isBalanced", True):
            continue
        gold = question["answer"]
        predicted = predictions.get(qid)
        correct = predicted == gold
        score = 1.0 if correct else 0.0
        per_question[qid] = 100 * score
        accuracy.append(score)
        types = question.get("types", {})
        structural = types.get("structural")
        (open_ if structural == "query" else binary).append(score)
        if structural is not None:
            by_structural[structural].append(score)
        if types.get("semantic") is not None:
            by_semantic[types["semantic"]].append(score)

        if choices is not None:
            if qid not in choices:
                raise PgmError(
                    f"The GQA choices file has no entry for question {qid!r}.",
                    "Pass the choices file of the same split as the questions (e.g. val_choices.json with val questions).",
                )
            validity.append(1.0 if _belongs(predicted, choices[qid]["valid"], question) else 0.0)
            plausibility.append(1.0 if _belongs(predicted, choices[qid]["plausible"], question) else 0.0)

        global_group = question.get("groups", {}).get("global")
        if global_group is not None:
            gold_dist[global_group][gold] += 1
            if predicted is not None:
                pred_dist[global_group][predicted] += 1

        entailed = [eid for eid in question.get("entailed", ()) if eid != qid]
        if correct and entailed:
            known = [eid for eid in entailed if eid in questions]
            entailed_missing += len(entailed) - len(known)
            if known:
                consistency.append(
                    _avg([1.0 if predictions.get(eid) == questions[eid]["answer"] else 0.0 for eid in known])
                )

    result = {
        "accuracy": 100 * _avg(accuracy),
        "binary": 100 * _avg(binary),
        "open": 100 * _avg(open_),
        "consistency": 100 * _avg(consistency),
        "per_structural_type": {t: 100 * _avg(s) for t, s in by_structural.items()},
        "per_semantic_type": {t: 100 * _avg(s) for t, s in by_semantic.items()},
        "entailed_missing": entailed_missing,
        "per_question": per_question,
    }
    if choices is not None:
        result["validity"] = 100 * _avg(validity)
        result["plausibility"] = 100 * _avg(plausibility)
    if gold_dist:
        result["distribution"] = _chi_square(gold_dist, pred_dist) / 100
    return result
