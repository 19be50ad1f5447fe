"""The official scoring loops, ported to Python 3 for bench/official_compare.py only (pgm never imports this).

Written for this comparison from reading the scripts, keeping their structure and their quirks
(nothing here is fetched code):

- VQA: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py at its current master
  ("Fixed processing answers bug"), run as Python 3 runs it: its `re` patterns are str patterns,
  so `\\d` is any Unicode digit, and the `re.UNICODE` it passes to `periodStrip.sub` lands in
  `count`. The contraction table and the number words are the script's data; this port takes
  them from paligemma_cli.metrics.vqa (so the comparison checks the logic, not the table).
- ANLS: the RRC evaluation script of DocVQA / InfographicVQA (`evaluate_method` of the
  "InfographVQA evaluation script", docvqa.org/datasets/infographicvqa, rrc.cvc.uab.es/?ch=17),
  its textbook Levenshtein included.
- GQA: eval.py of the GQA data set (gqadataset.org, cs.stanford.edu/people/dorarad/gqa/evaluate.html)
  with --consistency, its main loop and chiSquare (no grounding: it needs attention maps).
"""

from __future__ import annotations

import re
from collections import defaultdict

from paligemma_cli.metrics.vqa import _CONTRACTIONS, _NUMBERS

# ----- vqaEval.py ----------------------------------------------------------------------------------

VQA_PUNCT = [';', r"/", '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!']
VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
VQA_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
VQA_ARTICLES = ["a", "an", "the"]


def vqa_process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in VQA_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(VQA_COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return VQA_PERIOD_STRIP.sub("", out_text, int(re.UNICODE))  # the script passes the flag as `count`


def vqa_process_digit_article(in_text: str, manual_map: dict) -> str:
    out_text = []
    for word in in_text.lower().split():
        word = manual_map.setdefault(word, word)  # the script's setdefault grows its map; harmless
        if word not in VQA_ARTICLES:
            out_text.append(word)
    for word_id, word in enumerate(out_text):
        if word in _CONTRACTIONS:
            out_text[word_id] = _CONTRACTIONS[word]
    return " ".join(out_text)


def _vqa_clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_eval(annotations: list[dict], results: dict, n: int = 2) -> dict:
    """VQAEval.evaluate + setAccuracy: annotations as in v2_mscoco_*_annotations.json, results {qid: answer}.

    Returns the script's rounded `accuracy` dict plus the unrounded per-question accuracies and
    per-type lists it averages (`acc_qa`, `acc_ques_type`, `acc_ans_type`).
    """
    manual_map = dict(_NUMBERS)
    acc_qa, acc_ques_type, acc_ans_type, per_question = [], {}, {}, {}
    for ann in annotations:
        ann = {**ann, "answers": [dict(a) for a in ann["answers"]]}  # the script edits the answers in place
        for ans_dic in ann["answers"]:
            ans_dic["answer"] = _vqa_clean(ans_dic["answer"])
        res_ans = _vqa_clean(results[ann["question_id"]])
        gt_answers = [ans["answer"] for ans in ann["answers"]]
        if len(set(gt_answers)) > 1:
            for ans_dic in ann["answers"]:
                ans_dic["answer"] = vqa_process_digit_article(vqa_process_punctuation(ans_dic["answer"]), manual_map)
            res_ans = vqa_process_digit_article(vqa_process_punctuation(res_ans), manual_map)
        gt_acc = []
        for gt_ans_datum in ann["answers"]:
            other_gt_ans = [item for item in ann["answers"] if item != gt_ans_datum]
            matching_ans = [item for item in other_gt_ans if item["answer"] == res_ans]
            gt_acc.append(min(1, float(len(matching_ans)) / 3))
        avg_gt_acc = float(sum(gt_acc)) / len(gt_acc)
        acc_qa.append(avg_gt_acc)
        acc_ques_type.setdefault(ann["question_type"], []).append(avg_gt_acc)
        acc_ans_type.setdefault(ann["answer_type"], []).append(avg_gt_acc)
        per_question[ann["question_id"]] = avg_gt_acc
    accuracy = {
        "overall": round(100 * float(sum(acc_qa)) / len(acc_qa), n),
        "perQuestionType": {t: round(100 * float(sum(a)) / len(a), n) for t, a in acc_ques_type.items()},
        "perAnswerType": {t: round(100 * float(sum(a)) / len(a), n) for t, a in acc_ans_type.items()},
    }
    return {"accuracy": accuracy, "acc_qa": acc_qa, "acc_ques_type": acc_ques_type, "acc_ans_type": acc_ans_type,
            "per_question": per_question}


# ----- the RRC ANLS script --------------------------------------------------------------------------

RRC_ANSWER_TYPES = {"image span": "Image-Span", "question span": "Question-Span", "multiple spans": "Multi-Span",
                    "non span": "None span"}
RRC_EVIDENCE_TYPES = {"table/list": "Table/list", "textual": "Text", "photo/pciture/visual_objects": "Visual/Layout",
                      "figure": "Figure", "map": "Map"}
RRC_REASONING = {"comparison": "Sorting", "arithmetic": "Arithmetic", "counting": "Counting"}


def rrc_levenshtein(s1: str, s2: str) -> int:
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        row = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                row.append(distances[i1])
            else:
                row.append(1 + min((distances[i1], distances[i1 + 1], row[-1])))
        distances = row
    return distances[-1]


def rrc_evaluate(gt: dict, submission: list[dict], anls_threshold: float = 0.5, answer_types: bool = False) -> dict:
    """evaluate_method: `gt` the annotation JSON ({"data": [...]}), `submission` the results list."""
    res_id_to_index = {int(r["questionId"]): ix for ix, r in enumerate(submission)}
    per_sample, total = {}, 0
    type_maps = (("answer_type", RRC_ANSWER_TYPES), ("evidence", RRC_EVIDENCE_TYPES),
                 ("operation/reasoning", RRC_REASONING))
    totals = {field: {x: 0 for x in names} for field, names in type_maps}
    counts = {field: {x: 0 for x in names} for field, names in type_maps}
    for gt_object in gt["data"]:
        det_object = submission[res_id_to_index[int(gt_object["questionId"])]]
        values = []
        for answer in gt_object["answers"]:
            gt_answer = " ".join(answer.strip().lower().split())
            det_answer = " ".join(det_object["answer"].strip().lower().split())
            dist = rrc_levenshtein(gt_answer, det_answer)
            length = max(len(answer.upper()), len(det_object["answer"].upper()))
            values.append(0.0 if length == 0 else float(dist) / float(length))
        question_result = 1 - min(values)
        if question_result < anls_threshold:
            question_result = 0
        total += question_result
        if answer_types:
            for field, _ in type_maps:
                for q_type in gt_object[field]:
                    totals[field][q_type] += question_result
                    counts[field][q_type] += 1
        per_sample[str(gt_object["questionId"])] = {"score": question_result}
    result = {"score": 0 if len(gt["data"]) == 0 else total / len(gt["data"])}
    by_types = {}
    if answer_types:
        for (field, names), key in zip(type_maps, ("answer_types", "evidence_types", "operation_types")):
            by_types[key] = {ref: totals[field][t] / counts[field][t] for t, ref in names.items()}
    return {"result": result, "scores_by_types": by_types, "per_sample_result": per_sample}


# ----- GQA eval.py ------------------------------------------------------------------------------------

def _gqa_avg(values: list) -> float:
    return 0 if len(values) == 0 else float(sum(values)) / len(values)


def _gqa_steps(question: dict) -> int:
    return len([c for c in question["semantic"] if not any([o in "{}: {}".format(c["operation"], c["argument"])
                                                            for o in ["exist", "query: name", "choose name"]])])


def _gqa_chi_square(gold_dist: dict, predicted_dist: dict) -> float:
    sum_score, sum_overall = 0, 0
    for group in gold_dist:
        score, overall = 0, 0
        for ans in gold_dist[group]:
            e = gold_dist[group][ans]
            o = predicted_dist[group].get(ans, 0)
            score += (float(o - e) ** 2) / e
            overall += gold_dist[group][ans]
        sum_score += score * overall
        sum_overall += overall
    return float(sum_score) / sum_overall


def gqa_eval(questions: dict, choices: dict | None, predictions: dict) -> dict:
    """eval.py --consistency over `questions` (all questions), `choices` and {qid: prediction}."""
    scores = {"accuracy": [], "binary": [], "open": [], "validity": [], "plausibility": [], "consistency": [],
              "accuracyPerStructuralType": defaultdict(list), "accuracyPerSemanticType": defaultdict(list),
              "accuracyPerLength": defaultdict(list), "accuracyPerSteps": defaultdict(list)}
    dist = {"gold": defaultdict(lambda: defaultdict(int)), "predicted": defaultdict(lambda: defaultdict(int))}
    for qid, question in questions.items():
        if not question["isBalanced"]:
            continue
        gold, predicted = question["answer"], predictions[qid]
        correct = predicted == gold
        score = float(1 if correct else 0)
        scores["accuracy"].append(score)
        scores["accuracyPerLength"][len(question["question"].split())].append(score)
        scores["accuracyPerSteps"][_gqa_steps(question)].append(score)
        scores["accuracyPerStructuralType"][question["types"]["structural"]].append(score)
        scores["accuracyPerSemanticType"][question["types"]["semantic"]].append(score)
        scores["open" if question["types"]["structural"] == "query" else "binary"].append(score)
        for metric in ("valid", "plausible"):
            group = choices[qid][metric] if choices else None
            if choices and "Common" in question["types"]["detailed"]:
                group = ["color", "material", "shape"]
            scores["validity" if metric == "valid" else "plausibility"].append(
                float(1 if (choices and predicted in group) else 0))
        global_group = question["groups"]["global"]
        if global_group is not None:
            dist["gold"][global_group][gold] += 1
            dist["predicted"][global_group][predicted] += 1
        inferred = [eid for eid in question["entailed"] if eid != qid]
        if correct and len(inferred) > 0:
            scores["consistency"].append(_gqa_avg([float(1 if predictions[eid] == questions[eid]["answer"] else 0)
                                                   for eid in inferred]))
    scores["distribution"] = _gqa_chi_square(dist["gold"], dist["predicted"]) / 100
    for k in ("binary", "open", "accuracy", "consistency", "validity", "plausibility"):
        scores[k] = _gqa_avg(scores[k]) * 100
    for k in ("accuracyPerStructuralType", "accuracyPerSemanticType", "accuracyPerSteps", "accuracyPerLength"):
        scores[k] = {t: (_gqa_avg(v) * 100, len(v)) for t, v in scores[k].items()}
    return scores
