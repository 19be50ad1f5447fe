"""ANLS (Average Normalized Levenshtein Similarity), the DocVQA / InfographicVQA / ST-VQA metric.

Default (``variant="rrc"``): what the Robust Reading Competition evaluation script computes, the
one the docvqa.org / rrc.cvc.uab.es server runs (its InfographicVQA copy, "InfographVQA
evaluation script", is published at docvqa.org/datasets/infographicvqa). Per question and answer,
the Levenshtein distance of the two strings stripped, lower-cased and with whitespace runs
collapsed, divided by ``max(len(gt.upper()), len(pred.upper()))`` of the two strings *as given*
(so surrounding spaces lengthen the divisor, and "ß".upper() counts two); the question scores
``1 - min(NL)`` over its answers, or 0 when that is *below* the threshold (so NL = 0.5 scores
0.5). Averaged over questions.

``variant="paper"``: the definition of Biten et al. (ICCV 2019) as the `anls` package follows it:
the divisor is the longer *normalised* string and an answer counts only when ``NL < threshold``
(so NL = 0.5 scores 0). `pgm eval --anls-variant paper` reports it as ``anls_paper``, never as
``anls``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein

from paligemma_cli.errors import PgmError

VARIANTS = ("rrc", "paper")


def _normalize(text: str) -> str:
    # Both variants: case-insensitive; whitespace runs and leading/trailing whitespace do not count.
    return " ".join(text.strip().lower().split())


def _rrc_score(prediction: str, answers: Sequence[str], threshold: float) -> float:
    pred = _normalize(prediction)
    pred_len = len(prediction.upper())
    distances = []
    for answer in answers:
        longest = max(len(answer.upper()), pred_len)
        distances.append(0.0 if longest == 0 else Levenshtein.distance(_normalize(answer), pred) / longest)
    score = 1 - min(distances)
    return 0.0 if score < threshold else score


def _paper_score(prediction: str, answers: Sequence[str], threshold: float) -> float:
    pred = _normalize(prediction)
    best = 0.0
    for answer in answers:
        gt = _normalize(answer)
        longest = max(len(pred), len(gt))
        nl = 0.0 if longest == 0 else Levenshtein.distance(pred, gt) / longest
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


_SCORERS = {"rrc": _rrc_score, "paper": _paper_score}


def anls_score(prediction: str, answers: Sequence[str], threshold: float = 0.5, *, variant: str = "rrc") -> float:
    """ANLS of one prediction against its accepted answers, in [0, 1] (see the module for the variants).

    No answers scores 0 (the RRC script stops with an error on such a question).
    """
    if variant not in _SCORERS:
        raise PgmError(f"Unknown ANLS variant {variant!r}.", f"Use one of: {', '.join(VARIANTS)}.")
    if not answers:
        return 0.0
    return _SCORERS[variant](prediction, answers, threshold)


def anls(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    threshold: float = 0.5,
    *,
    variant: str = "rrc",
    categories: Mapping[str, Mapping[Hashable, Sequence[str]]] | None = None,
) -> dict:
    """ANLS over a data set: ``{"anls", "per_question": {id: score}, "per_<category>": {type: mean}}``.

    Averages over every id in `references` (summed in their order, as the RRC script does); ids
    missing from `predictions` score 0 and predictions for unknown ids are ignored.

    `categories` gives breakdowns, e.g. ``{"answer_type": {id: ["image span"]}}``: as in the RRC
    script, a question counts once in each type it lists (InfographicVQA's ``answer_type``,
    ``evidence`` and ``operation/reasoning`` are lists) and each type's score is the mean over its
    questions. Only types that occur are reported, under the annotation's own names (the script
    prints fixed display names, "Image-Span" for "image span", and stops with an error on a type
    it does not list or one with no question).
    """
    score_one = _SCORERS.get(variant)
    if score_one is None:
        raise PgmError(f"Unknown ANLS variant {variant!r}.", f"Use one of: {', '.join(VARIANTS)}.")
    per_question = {}
    for qid, answers in references.items():
        prediction = predictions.get(qid)
        per_question[qid] = 0.0 if prediction is None or not answers else score_one(prediction, answers, threshold)
    result: dict = {"anls": sum(per_question.values()) / len(per_question) if per_question else 0.0,
                    "per_question": per_question}
    for name, labels in (categories or {}).items():
        result[f"per_{name}"] = mean_by_label(per_question, labels)
    return result


def mean_by_label(scores: Mapping[Hashable, float], labels: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
    """{label: mean score of the questions listing it}; a question counts once per label it lists."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for qid, score in scores.items():
        for label in labels.get(qid, ()):
            sums[label] = sums.get(label, 0) + score
            counts[label] = counts.get(label, 0) + 1
    return {label: sums[label] / counts[label] for label in sums}
