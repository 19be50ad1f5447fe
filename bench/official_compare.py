"""pgm's metrics next to the official scoring loops, on adversarial cases: every number must be equal.

Run: .venv/bin/python bench/official_compare.py [--cases 5000] [--seed 0] [--tasks vqav2 docvqa gqa coco]

For each task it draws seeded random cases built to hit the official scripts' corners, scores them
with pgm (paligemma_cli.metrics) and with the official loop (bench/official_ports.py, ported from
reading the scripts; COCO runs pycocoevalcap's own COCOEvalCap.evaluate), and compares every
per-question score and every aggregate for exact float equality:

- vqav2: answers and predictions mixing Unicode digits (Arabic-Indic, Devanagari, fullwidth,
  superscripts), every listed punctuation character and some unlisted ones, Unicode spaces
  (NBSP, U+3000, U+2009, \\x1f, \\x85), tabs and newlines, capitals with special case mappings
  ("İ", "ß"), number words, articles and contraction keys; unanimous and split annotators.
  Compared: each question's accuracy, the overall, per-answer-type and per-question-type means,
  and the script's 2-decimal rounding of each.
- docvqa: gold answers (1-3, empty strings included) and predictions with surrounding and inner
  whitespace, case changes, characters whose upper case is longer ("ß", "ﬁ"), edits at exactly
  half the length; InfographicVQA's answer_type / evidence / operation lists.
  Compared: each question's ANLS, the mean, and every type's mean (the script's -a breakdown).
- gqa: balanced and unbalanced questions with entailed ids (itself included), structural and
  semantic types, "Common" questions, global groups, programs whose arguments contain "exist",
  question texts with tabs and runs of spaces. Compared: accuracy, binary, open, consistency,
  validity, plausibility, distribution, and the four per-type breakdowns (eval.py --consistency).
- coco (needs Java, ~30 s): captions with punctuation, capitals, Unicode and empty predictions.
  Compared: Bleu_1-4, METEOR, ROUGE_L, CIDEr against COCOEvalCap.evaluate (SPICE left out: its
  CoreNLP download needs a network).

Prints one markdown row per task (cases, values compared, differences) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import official_ports as official  # noqa: E402

from paligemma_cli.metrics.anls import anls  # noqa: E402
from paligemma_cli.metrics.gqa import gqa_metrics  # noqa: E402
from paligemma_cli.metrics.vqa import vqa_accuracy  # noqa: E402

ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2009", "\x1f", "\x85"]
DIGITS = "0123456789" * 2 + "\u0660\u0661\u0665\u0669\u0967\u096b\uff11\uff15\u00b2\u00bd"
LETTERS = "abcdefghrstwxyz" * 2 + "ABCDRTXY\u0130\u00df\u00e9\u00c9\ufb01\u03a3"
PUNCT = ';/[]"{}()=+\\_-><@`,?!' + ".....:'\u2019"
WORDS = ["a", "an", "the", "The", "one", "Two", "ten", "none", "dont", "Im", "somebody'd", "whats", "yes", "no",
         "red", "t-shirt", "1,000", "2.5", "10:30", "1.\u0665", "1\u0665", "\u0665.5", "\u0661,\u0665", "\uff12.\uff15",
         "\u0661,\u0660\u0660\u0660", "mr.smith", "3.", "2.\u00b2"]


class Tally:
    """Counts compared values and keeps the first few differences."""

    def __init__(self) -> None:
        self.compared, self.differences = 0, []

    def check(self, what: str, ours, theirs) -> None:
        self.compared += 1
        if ours != theirs:
            self.differences.append(f"{what}: pgm {ours!r} official {theirs!r}")


def _token(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(WORDS)
    pools = [LETTERS, DIGITS, PUNCT]
    return "".join(rng.choice(rng.choices(pools, weights=[6, 3, 2])[0]) for _ in range(rng.randint(1, 6)))


def random_text(rng: random.Random, words: tuple[int, int] = (1, 3)) -> str:
    text = "".join(_token(rng) + rng.choice(SPACES) for _ in range(rng.randint(*words)))[:-1]
    if rng.random() < 0.2:
        text = rng.choice(SPACES) + text + rng.choice(SPACES + ["", "."])
    return text


def variant(rng: random.Random, text: str) -> str:
    """What an annotator or a model writes for the same answer."""
    how = rng.randrange(9)
    if how == 0:
        return text.upper() if rng.random() < 0.5 else text.capitalize()
    if how == 1:
        return text + rng.choice(PUNCT)
    if how == 2:
        return rng.choice(["the ", "a ", "A ", "The\t"]) + text
    if how == 3:
        return text.translate(ARABIC_INDIC)
    if how == 4:
        return rng.choice(SPACES) + text + rng.choice(SPACES)
    if how == 5:
        return text.replace(" ", rng.choice(SPACES))
    if how == 6:  # periods and commas between digits come and go
        return text.replace(".", "") if rng.random() < 0.5 else text.replace(",", "")
    if how == 7 and len(text) > 1:
        i = rng.randrange(1, len(text))
        return text[:i] + rng.choice(".,") + text[i:]
    return text


# ----- VQAv2 ----------------------------------------------------------------------------------------

def _vqa_case(rng: random.Random, qid: int) -> tuple[dict, str]:
    base = random_text(rng)
    if rng.random() < 0.3:
        answers = [base] * 10 if rng.random() < 0.5 else [base + rng.choice(["", "\n", " ", "\t"]) for _ in range(10)]
    else:
        others = [random_text(rng) for _ in range(2)]
        answers = [variant(rng, base) if rng.random() < 0.6 else rng.choice(others) for _ in range(10)]
    prediction = variant(rng, rng.choice(answers)) if rng.random() < 0.7 else random_text(rng)
    annotation = {"question_id": qid, "question_type": rng.choice(["what is the", "how many", "is the", "[b]why"]),
                  "answer_type": rng.choice(["yes/no", "number", "other"]),
                  "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                              for i, a in enumerate(answers)]}
    return annotation, prediction


def compare_vqa(cases: int, seed: int) -> Tally:
    rng = random.Random(seed)
    fixed = [({"question_id": 0, "question_type": "what is the", "answer_type": "number",  # issue #19's case
               "answers": [{"answer": a, "answer_id": i + 1} for i, a in
                           enumerate(["1.\u0665"] * 8 + ["1\u0665", "1.5"])]}, "1\u0665")]
    drawn = fixed + [_vqa_case(rng, qid) for qid in range(1, cases)]
    annotations = [a for a, _ in drawn]
    results = {a["question_id"]: p for a, p in drawn}
    references = {a["question_id"]: {"answers": [x["answer"] for x in a["answers"]], "answer_type": a["answer_type"],
                                     "question_type": a["question_type"]} for a in annotations}
    ours, theirs = vqa_accuracy(results, references), official.vqa_eval(annotations, results)
    tally = Tally()
    for qid, acc in theirs["per_question"].items():
        tally.check(f"question {qid}", ours["per_question"][qid], 100 * acc)
    tally.check("overall", ours["accuracy"], 100 * float(sum(theirs["acc_qa"])) / len(theirs["acc_qa"]))
    tally.check("overall, rounded", round(ours["accuracy"], 2), theirs["accuracy"]["overall"])
    for ours_key, their_lists, their_rounded in (("per_answer_type", "acc_ans_type", "perAnswerType"),
                                                 ("per_question_type", "acc_ques_type", "perQuestionType")):
        tally.check(f"{ours_key} types", list(ours[ours_key]), list(theirs[their_lists]))
        for t, accs in theirs[their_lists].items():
            tally.check(f"{ours_key} {t}", ours[ours_key][t], 100 * float(sum(accs)) / len(accs))
            tally.check(f"{ours_key} {t}, rounded", round(ours[ours_key][t], 2), theirs["accuracy"][their_rounded][t])
    return tally


# ----- DocVQA / InfographicVQA ANLS ------------------------------------------------------------------

def _edit(rng: random.Random, text: str, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        op = rng.randrange(3)
        i = rng.randrange(len(chars) + (op == 1)) if chars or op == 1 else 0
        if op == 0 and chars:
            chars[i] = rng.choice(LETTERS)
        elif op == 1:
            chars.insert(i, rng.choice(LETTERS + " "))
        elif chars:
            del chars[i]
    return "".join(chars)


def _anls_case(rng: random.Random, qid: int) -> tuple[dict, str]:
    answers = [random_text(rng) if rng.random() < 0.9 else "" for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:  # short answers, where one edit is exactly half the length
        answers[0] = "".join(rng.choice(LETTERS) for _ in range(rng.choice([2, 4, 6])))
    gold = rng.choice(answers)
    r = rng.random()
    if r < 0.6:
        prediction = variant(rng, _edit(rng, gold, rng.randint(0, max(1, len(gold) // 2))))
    elif r < 0.7:
        prediction = rng.choice(["", " ", "\t\n"])
    else:
        prediction = random_text(rng)

    def some(names):
        return rng.sample(sorted(names), rng.randint(0, 2))

    item = {"questionId": qid, "question": "q", "answers": answers,
            "answer_type": some(official.RRC_ANSWER_TYPES) or ["non span"],
            "evidence": some(official.RRC_EVIDENCE_TYPES), "operation/reasoning": some(official.RRC_REASONING)}
    return item, prediction


def compare_anls(cases: int, seed: int) -> Tally:
    rng = random.Random(seed)
    fixed = [("ln", "sn"), ("qt", " yt  "), ("Philip Morris U.S.A.", " Philip Morris Utn.S.A.\t")]  # issue #19
    drawn = [({"questionId": i, "question": "q", "answers": [gold], "answer_type": ["image span"],
               "evidence": ["textual"], "operation/reasoning": []}, pred) for i, (gold, pred) in enumerate(fixed)]
    drawn += [_anls_case(rng, qid) for qid in range(len(fixed), cases)]
    # The script divides by each type's count: give every type it lists one question.
    for field, names in (("answer_type", official.RRC_ANSWER_TYPES), ("evidence", official.RRC_EVIDENCE_TYPES),
                         ("operation/reasoning", official.RRC_REASONING)):
        for k, name in enumerate(names):
            drawn[len(fixed) + k][0][field] = sorted(set(drawn[len(fixed) + k][0][field]) | {name})
    data = [item for item, _ in drawn]
    submission = [{"questionId": item["questionId"], "answer": pred} for item, pred in drawn]
    theirs = official.rrc_evaluate({"data": data}, submission, answer_types=True)
    fields = {"answer_type": ("answer_types", official.RRC_ANSWER_TYPES),
              "evidence": ("evidence_types", official.RRC_EVIDENCE_TYPES),
              "operation/reasoning": ("operation_types", official.RRC_REASONING)}
    ours = anls({s["questionId"]: s["answer"] for s in submission}, {d["questionId"]: d["answers"] for d in data},
                categories={field: {d["questionId"]: d[field] for d in data} for field in fields})
    tally = Tally()
    for qid, sample in theirs["per_sample_result"].items():
        tally.check(f"question {qid}", ours["per_question"][int(qid)], sample["score"])
    tally.check("anls", ours["anls"], theirs["result"]["score"])
    for field, (key, names) in fields.items():
        for raw, shown in names.items():
            tally.check(f"{field} {raw}", ours[f"per_{field}"][raw], theirs["scores_by_types"][key][shown])
    return tally


# ----- GQA -------------------------------------------------------------------------------------------

GQA_ANSWERS = ["yes", "no", "red", "blue", "wood", "metal", "color", "material", "shape", "man", "left", "Red"]
GQA_STEPS = [("select", "table (5)"), ("select", "coexistence (4)"), ("relate", "_,on,s (12)"), ("query", "name"),
             ("query", "color"), ("exist", "?"), ("verify color", "red"), ("choose name", "cat|dog"),
             ("filter", "existing"), ("and", ""), ("different color", "")]


def _gqa_question(rng: random.Random, qid: str, ids: list[str]) -> dict:
    structural = rng.choice(["query", "verify", "logical", "choose", "compare"])
    words = [rng.choice(["what", "is", "the", "man", "on", "left", "of", "table?"]) for _ in range(rng.randint(1, 14))]
    return {"question": "".join(w + rng.choice([" ", " ", "  ", "\t", "\u00a0"]) for w in words),
            "answer": rng.choice(GQA_ANSWERS), "isBalanced": rng.random() < 0.6,
            "types": {"structural": structural, "semantic": rng.choice(["rel", "attr", "obj", "cat", "global"]),
                      "detailed": rng.choice(["materialCommon", "colorCommon", "relS", "existAttr", "twoSame"])},
            "groups": {"global": rng.choice([None, None, "color", "place", "g3"]), "local": "x"},
            "entailed": rng.sample(ids, rng.randint(0, 3)) + ([qid] if rng.random() < 0.2 else []),
            "semantic": [{"operation": op, "dependencies": [], "argument": arg}
                         for op, arg in rng.choices(GQA_STEPS, k=rng.randint(0, 6))]}


def compare_gqa(cases: int, seed: int) -> Tally:
    rng = random.Random(seed)
    ids = [f"q{i}" for i in range(cases)]
    questions = {qid: _gqa_question(rng, qid, ids) for qid in ids}
    questions[ids[0]]["isBalanced"] = True
    questions[ids[0]]["groups"]["global"] = "color"  # eval.py divides by the grouped questions
    choices = {qid: {"valid": rng.sample(GQA_ANSWERS, 4), "plausible": rng.sample(GQA_ANSWERS, 2)} for qid in ids}
    predictions = {qid: q["answer"] if rng.random() < 0.6 else rng.choice(GQA_ANSWERS) for qid, q in questions.items()}
    ours = gqa_metrics(predictions, questions, choices=choices)
    theirs = official.gqa_eval(questions, choices, predictions)
    tally = Tally()
    for name in ("accuracy", "binary", "open", "consistency", "validity", "plausibility", "distribution"):
        tally.check(name, ours[name], theirs[name])
    for ours_key, their_key in (("per_structural_type", "accuracyPerStructuralType"),
                                ("per_semantic_type", "accuracyPerSemanticType"),
                                ("per_steps_number", "accuracyPerSteps"), ("per_words_number", "accuracyPerLength")):
        tally.check(f"{ours_key} keys", list(ours[ours_key]), sorted(theirs[their_key]))  # eval.py prints sorted
        for t, (acc, _count) in theirs[their_key].items():
            tally.check(f"{ours_key} {t}", ours[ours_key].get(t), acc)
    return tally


# ----- COCO captions -----------------------------------------------------------------------------------

class _NoSpice:
    """Stands in for SPICE inside COCOEvalCap.evaluate: its CoreNLP download needs a network."""

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)

    def method(self):
        return "SPICE"


def compare_coco(cases: int, seed: int) -> Tally:
    import pycocoevalcap.eval as coco_eval
    from pycocotools.coco import COCO

    from paligemma_cli.metrics.captioning import caption_metrics

    rng = random.Random(seed)
    references = {i: [random_text(rng, (3, 10)) for _ in range(rng.randint(1, 5))] for i in range(1, cases + 1)}
    predictions = {i: variant(rng, rng.choice(caps)) if rng.random() < 0.6 else random_text(rng, (0, 8))
                   for i, caps in references.items()}
    coco = COCO()
    pairs = [(i, c) for i, captions in references.items() for c in captions]
    coco.dataset = {"images": [{"id": i} for i in references],
                    "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(pairs, 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        res = coco.loadRes([{"image_id": i, "caption": p} for i, p in predictions.items()])
        spice, coco_eval.Spice = coco_eval.Spice, _NoSpice
        try:
            evaluator = coco_eval.COCOEvalCap(coco, res)
            evaluator.evaluate()
        finally:
            coco_eval.Spice = spice
        ours = caption_metrics(predictions, references)
    tally = Tally()
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        tally.check(name, ours["metrics"][name], float(evaluator.eval[name]))
    for i in references:  # per image: COCOEvalCap's imgToEval (SPICE left out)
        for name in ("METEOR", "ROUGE_L", "CIDEr"):
            tally.check(f"image {i} {name}", ours["per_image"][i][name], float(evaluator.imgToEval[i][name]))
    return tally


TASKS = {
    "vqav2": ("vqaEval.py (GT-Vision-Lab/VQA master, Python 3)", compare_vqa),
    "docvqa": ("RRC DocVQA/InfographicVQA ANLS script (evaluate_method)", compare_anls),
    "gqa": ("GQA eval.py --consistency", compare_gqa),
    "coco": ("pycocoevalcap COCOEvalCap.evaluate", compare_coco),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000, help="Cases per task (COCO: a tenth, images).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args()
    print("| task | official scoring | cases | values compared | differences | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    failed = False
    for name in args.tasks:
        title, compare = TASKS[name]
        cases = max(20, args.cases // 10) if name == "coco" else args.cases
        start = time.perf_counter()
        tally = compare(cases, args.seed)
        print(f"| {name} | {title} | {cases:,} | {tally.compared:,} | {len(tally.differences)} "
              f"| {time.perf_counter() - start:.1f} |", flush=True)
        for line in tally.differences[:5]:
            print(f"|  | {line!r} | | | | |")
        failed = failed or bool(tally.differences)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
