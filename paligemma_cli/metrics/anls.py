"""ANLS (Average Normalized Levenshtein Similarity), the DocVQA / ST-VQA / InfographicVQA metric.

Definition (Biten et al., ICCV 2019, "Scene Text Visual Question Answering"; DocVQA uses the
same): per question, ``max over answers of (1 - NL)`` if ``NL < threshold`` else 0, with
``NL = Levenshtein(a, b) / max(len(a), len(b))`` on lower-cased strings whose whitespace is
stripped and collapsed; averaged over questions.

Known divergence, kept out on purpose: the Robust Reading Competition evaluation script for
DocVQA / InfographicVQA takes ``max(len)`` of the *raw* (unnormalised) strings and zeroes a
question only when ``1 - NL < threshold``, so an answer at exactly NL = 0.5 scores 0.5 there
and 0 here. We follow the paper's definition, as the `anls` package (shunk031/ANLS) does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein


def _normalize(text: str) -> str:
    # Case-insensitive, and whitespace differences (runs, leading/trailing) do not count.
    return " ".join(text.lower().split())


def _similarity(pred: str, gt: str, threshold: float) -> float:
    longest = max(len(pred), len(gt))
    if longest == 0:
        return 1.0  # both empty: identical
    nl = Levenshtein.distance(pred, gt) / longest
    return 1.0 - nl if nl < threshold else 0.0


def anls_score(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """ANLS of one prediction against its accepted answers, in [0, 1].

    The best answer counts: ``max(1 - NL)`` over answers, where an answer with
    ``NL >= threshold`` contributes 0. No answers gives 0.
    """
    pred = _normalize(prediction)
    return max((_similarity(pred, _normalize(a), threshold) for a in answers), default=0.0)


def anls(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    threshold: float = 0.5,
) -> dict:
    """ANLS over a data set: ``{"anls": mean in [0, 1], "per_question": {id: score}}``.

    Averages over every id in `references`; ids missing from `predictions` score 0 and
    predictions for unknown ids are ignored.
    """
    per_question = {}
    for qid, answers in references.items():
        prediction = predictions.get(qid)
        per_question[qid] = 0.0 if prediction is None else anls_score(prediction, answers, threshold)
    mean = sum(per_question.values()) / len(per_question) if per_question else 0.0
    return {"anls": mean, "per_question": per_question}
