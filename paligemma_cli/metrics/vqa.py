"""VQAv2 accuracy exactly as the official evaluation script computes it.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py, current master
(after the commit "Fixed processing answers bug", 2021), run under Python 3: its regexes match
Unicode digits, and `str.lower`, `str.split`, `str.strip` are Python 3's Unicode ones. Every
quirk of that script that can change a score is reproduced on purpose and commented where it
happens; the old copy of the script that still circulates (other punctuation list, curly
apostrophes, prediction always normalised) is *not* what this module implements, except for
``always_normalize=True``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from functools import lru_cache

from paligemma_cli.errors import PgmError

# Characters the official `processPunctuation` handles. ':' and the apostrophe are *not* in the
# current list (they were in the old one), so "don't" and "10:30" keep them.
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
# Fast path: most answers ("yes", "2", "red") contain none of these nor a period.
_HAS_PUNCT = re.compile(r'[;/\[\]"{}()=+\\_\-><@`,?!.]')
# The script run under Python 3 (as everyone runs it today) compiles str patterns, where `\d` is
# any Unicode decimal digit (Arabic-Indic "٥", Devanagari "५", fullwidth "５"), so these are not
# re.ASCII: "1٥,٥" has a digit,digit comma there, and the period of "1.٥" is followed by a digit.
_DIGIT_COMMA = re.compile(r"\d,\d")
# Official pattern is "(?!<=\d)(\.)(?!\d)": the first group is a (mistyped) negative
# *lookahead* for the literal "<=" + digit, which can never match where a "." stands, so the
# rule is simply "drop every period not followed by a digit" ("2." -> "2", "2.5" kept).
_PERIOD = re.compile(r"\.(?!\d)")
# The official call is `periodStrip.sub("", text, re.UNICODE)`: the flag lands in the `count`
# argument, so at most re.UNICODE == 32 periods are removed per answer.
_PERIOD_COUNT = 32

_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table (ASCII apostrophes since the 2021 fix), kept verbatim,
# including its oddities: keys with capitals ("Im", "Ive", "Id've", "I'dve") can never match
# because words are lower-cased first, and "somebody'd" maps *to* "somebodyd".
_CONTRACTIONS = dict(
    pair.split("=")
    for pair in """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't
    couldn'tve=couldn't've couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't
    hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd
    hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's
    Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've
    it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't
    notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
    'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's
    shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
    somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
    somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've
    someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
    somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
    weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've
    whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
    who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
    whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've
    wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
    y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've
    youll=you'll youre=you're youve=you've
    """.split()
)


def _clean(text: str) -> str:
    # The official first step for both prediction and ground truths.
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    if _HAS_PUNCT.search(text) is None:
        return text
    # Official rule, per character p: delete p if it touches a space anywhere in the text, or
    # if the text has a digit,digit comma anywhere ("1,000" -> "1000", but then *every* listed
    # character is deleted, e.g. "1,000-2,000" -> "10002000"); otherwise replace p by a space.
    # The tests look at the original text, so the replacements can be done in one pass.
    delete_all = "," in text and _DIGIT_COMMA.search(text) is not None
    table = {}
    for p in _PUNCT:
        if p in text:
            table[ord(p)] = "" if delete_all or p + " " in text or " " + p in text else " "
    if table:
        text = text.translate(table)
    return _PERIOD.sub("", text, count=_PERIOD_COUNT) if "." in text else text


def _process_digits_articles(text: str) -> str:
    # Python 3's str.lower and str.split, as the script runs today: full Unicode case mapping
    # ("İ" lower-cases to two characters) and every Unicode space (NBSP, U+3000, the \x1c-\x1f
    # separators) splits words.
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Return `text` after the official VQA answer processing.

    In order: newlines/tabs to spaces and strip; the punctuation rule (each of
    ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space or the
    text contains a digit,digit comma, otherwise replaced by a space); periods not followed by
    a digit removed (any Unicode decimal digit, as Python 3's ``\\d``); lower-case (str.lower);
    number words none..ten to digits; articles a/an/the dropped; the official contraction table
    ("dont" -> "don't"). Whitespace runs (str.split: any Unicode space) collapse to one space.
    """
    return _process_digits_articles(_process_punctuation(_clean(text)))


# Answer strings repeat massively across VQAv2 ("yes", "2", "white"), so normalise each once.
_normalized = lru_cache(maxsize=1 << 18)(normalize_answer)
_cleaned = lru_cache(maxsize=1 << 18)(_clean)


def _score(prediction: str, answers: Sequence[str], always_normalize: bool) -> float:
    gts = list(map(_cleaned, answers))  # map: the cached functions are C calls, 10 per question
    pred = _cleaned(prediction)
    if len(set(gts)) > 1:
        # Official: ground truths *and* prediction are processed only when annotators disagree.
        gts = list(map(_normalized, gts))
        pred = _normalized(pred)
    elif always_normalize:
        # EvalAI-server behaviour: the prediction is always processed. With unanimous
        # annotators the ground truths are still compared as given (already clean in VQAv2).
        pred = _normalized(pred)
    n = len(gts)
    matches = gts.count(pred)
    if matches == 0:
        return 0.0
    if matches > 3:
        return 1.0  # every leave-one-out subset still holds >= 3 matches
    # Mean over annotators i of min(1, matches among the other n-1 / 3), summed in annotator
    # order as the official loop does, so the float result is bit-identical.
    hit, miss = min(1, (matches - 1) / 3), min(1, matches / 3)
    return sum([hit if g == pred else miss for g in gts]) / n


def vqa_score(prediction: str, answers: Sequence[str], *, always_normalize: bool = False) -> float:
    """Official VQA accuracy of one prediction against its (usually 10) human answers, in [0, 1].

    ``min(1, #matching annotators / 3)`` averaged over the leave-one-annotator-out subsets, so
    1, 2, 3 matches out of 10 give 0.3, 0.6, 0.9. Normalisation (see `normalize_answer`) is
    applied to answers and prediction only when the answers are not all identical, as in the
    official script: with ten "yes" the prediction "Yes" scores 0. ``always_normalize=True``
    always normalises the prediction, like the EvalAI evaluation server.
    """
    if not answers:
        raise PgmError(
            "A VQA question has no ground-truth answers to score against.",
            "VQAv2 test-split answers are not public: evaluate on val, or submit test predictions to EvalAI.",
        )
    return _score(prediction, answers, always_normalize)


def vqa_accuracy(
    predictions: Mapping[Hashable, str],
    references: Mapping[Hashable, Mapping],
    *,
    always_normalize: bool = False,
) -> dict:
    """Official VQA accuracy over a data set.

    `references` maps question id to ``{"answers": [10 str], "answer_type": str,
    "question_type": str}`` (both types optional; a question without one is left out of that
    breakdown). Questions missing from `predictions` score 0; predictions for unknown ids are
    ignored.

    Returns ``{"accuracy", "per_answer_type": {type: acc}, "per_question_type": {type: acc},
    "per_question": {id: acc}}``, all in 0-100 and not rounded: vqaEval.py's ``accuracy``
    dict (``overall``, ``perAnswerType``, ``perQuestionType``) holds the same figures rounded
    to 2 decimals. Types appear in the order their first question does, as there.
    """
    questions = ((qid, ref["answers"], ref.get("answer_type"), ref.get("question_type"))
                 for qid, ref in references.items())
    return vqa_accuracy_of(predictions, questions, always_normalize=always_normalize)


def vqa_accuracy_of(
    predictions: Mapping[Hashable, str],
    questions: Iterable[tuple[Hashable, Sequence[str], str | None, str | None]],
    *,
    always_normalize: bool = False,
) -> dict:
    """`vqa_accuracy` over ``(id, answers, answer type, question type)`` tuples (no dict per question)."""
    per_question: dict = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    total = 0.0
    for qid, answers, answer_type, question_type in questions:
        if not answers:
            raise PgmError(
                f"VQA question {qid!r} has no ground-truth answers to score against.",
                "VQAv2 test-split answers are not public: evaluate on val, or submit test predictions to EvalAI.",
            )
        prediction = predictions.get(qid)
        acc = 0.0 if prediction is None else _score(prediction, answers, always_normalize)
        total += acc
        per_question[qid] = 100 * acc
        if answer_type is not None:
            by_answer_type.setdefault(answer_type, []).append(acc)
        if question_type is not None:
            by_question_type.setdefault(question_type, []).append(acc)
    return {
        "accuracy": 100 * total / len(per_question) if per_question else 0.0,
        "per_answer_type": _percent_by_type(by_answer_type),
        "per_question_type": _percent_by_type(by_question_type),
        "per_question": per_question,
    }


def _percent_by_type(scores: dict[str, list[float]]) -> dict[str, float]:
    # vqaEval.py: 100 * sum / len per type, summed in question order.
    return {t: 100 * sum(accs) / len(accs) for t, accs in scores.items()}
