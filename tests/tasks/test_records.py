"""Compact records from the official files: the Example attributes, GQA's lazy scoring files, no images to score."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from paligemma_cli.config import DataConfig
from paligemma_cli.infer.evaluate import read_predictions, run_evaluation
from paligemma_cli.metrics.gqa import gqa_metrics
from paligemma_cli.tasks import TASKS, get_task

EXPECTED_IMAGE = {  # the first eval example's image, relative to the data root
    "vqav2": "val2014/COCO_val2014_000000001001.jpg",
    "gqa": "images/n1000.jpg",
    "docvqa": "val/documents/doc01000.png",
    "coco": "val2017/000000001001.jpg",
}
EXPECTED_META = {"vqav2": {"question", "image_id", "answer_type", "question_type"}, "gqa": {"question", "image_id"},
                 "docvqa": {"question", "docId", "question_types"}, "coco": {"file_name"}}


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_records_have_the_example_attributes_and_survive_pickling(task_name, synthetic_data):
    task = get_task(task_name)
    root = synthetic_data(task_name)
    records = task.load_official(root, task.eval_split, None if task_name == "coco" else "q: {question}")
    first = records[0]
    assert first.image == root / EXPECTED_IMAGE[task_name] and first.image.is_file()
    assert set(first.meta) == EXPECTED_META[task_name]
    assert first.prefix == ("caption en" if task_name == "coco" else f"q: {first.meta['question']}")
    assert first.answers and all(type(a) is str for a in first.answers)
    # DataLoader workers started with spawn get the examples pickled: everything must come back.
    again = pickle.loads(pickle.dumps(records))
    assert [(r.id, r.image, r.prefix, r.answers, r.meta) for r in again] == \
           [(r.id, r.image, r.prefix, r.answers, r.meta) for r in records]


def _gqa_question(answer, balanced, entailed=(), structural="query"):
    # With the fields scoring skips (programs, annotations), as the official files have them.
    return {"semantic": [{"operation": "select", "dependencies": [], "argument": "table (5)"}],
            "entailed": list(entailed), "equivalent": [], "question": "what is it?", "imageId": "n1",
            "isBalanced": balanced, "groups": {"global": None, "local": "x"}, "answer": answer,
            "annotations": {"answer": {"0": "7"}}, "types": {"structural": structural, "semantic": "attr",
                                                             "detailed": "attr"}, "fullAnswer": "It is."}


def test_gqa_scores_from_the_all_questions_file_as_the_full_files_do(tmp_path):
    """Balanced q1, q2; unbalanced q3-q5 entailed by them; q6 entailed by nothing."""
    all_q = {"q1": _gqa_question("red", True, ["q3", "q4", "q1"]), "q2": _gqa_question("yes", True, ["q5"], "verify"),
             "q3": _gqa_question("no", False), "q4": _gqa_question("red", False), "q5": _gqa_question("yes", False),
             "q6": _gqa_question("cat", False)}
    choices = {qid: {"valid": ["red", "blue"] if qid == "q1" else ["no"], "plausible": ["red"]} for qid in all_q}
    (tmp_path / "val_all_questions.json").write_text(json.dumps(all_q))
    (tmp_path / "val_balanced_questions.json").write_text(json.dumps({k: all_q[k] for k in ("q1", "q2")}))
    (tmp_path / "val_choices.json").write_text(json.dumps(choices))
    predictions = {"q1": "red", "q2": "yes", "q3": "no", "q4": "blue", "q5": "no", "q6": "x"}

    task = get_task("gqa")
    examples = task.load_official(tmp_path, "val")
    score = task.score(predictions, examples, task.load_score_extra(tmp_path, "val"))
    # Both right; consistency: q1 -> mean(q3 right, q4 wrong) = 0.5, q2 -> q5 wrong = 0; validity: q1 only.
    assert (score.metrics["accuracy"], score.metrics["consistency"], score.metrics["validity"]) == (100.0, 25.0, 50.0)
    scored = {k: all_q[k] for k in ("q1", "q2", "q3", "q4", "q5")}  # what the whole-file json.load version scored
    full = gqa_metrics(predictions, scored, choices=choices)
    same = ("accuracy", "binary", "open", "consistency", "validity", "plausibility", "per_structural_type",
            "per_semantic_type", "per_steps_number", "per_words_number")
    assert {k: score.metrics[k] for k in same} == {k: full[k] for k in same}
    # The balanced file's programs and texts are decoded: one step ("select: table (5)"), three words.
    assert (score.metrics["per_steps_number"], score.metrics["per_words_number"]) == ({1: 100.0}, {3: 100.0})
    assert score.per_example == {"q1": 1.0, "q2": 1.0}


def test_scoring_a_results_file_needs_no_images(synthetic_data, tmp_path):
    """Only the JSON files are copied: the results-file path must never look for an image."""
    root = tmp_path / "vqav2"
    root.mkdir()
    for path in synthetic_data("vqav2").glob("*.json"):
        shutil.copy(path, root)
    task = get_task("vqav2")
    examples = task.load_official(root, "val2014")
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"question_id": str(ex.id), "answer": ex.answers[0]} for ex in examples]))
    result = run_evaluation(task, DataConfig(task="vqav2", data_root=root), predictions_file=results)
    assert result.metrics["accuracy"] == 100.0 and result.examples == len(examples) == len(result.rows)


def test_ids_written_as_strings_are_the_official_ids(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"question_id": "7", "answer": "red"}\n{"question_id": 8, "answer": "2"}\n\n')
    assert read_predictions(get_task("vqav2"), path) == ({7: "red", 8: "2"}, [])
    path.write_text(json.dumps([{"questionId": 123, "prediction": "no"}, {"questionId": "123", "prediction": "yes"}]))
    assert read_predictions(get_task("gqa"), path) == (
        {"123": "yes"}, [f"1 results in --predictions {path} repeat an id; the last one of each is used."])
