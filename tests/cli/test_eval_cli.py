"""`pgm eval` end to end on the tiny model: both files per task, rescoring them, bad results files."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from paligemma_cli.cli import app
from paligemma_cli.tasks import get_task
from tests.infer.test_evaluate import one_thread  # noqa: F401  (a fixture)

runner = CliRunner()

# The fixed metric keys per task (more may follow them).
HEADLINE = {
    "vqav2": ["accuracy", "per_answer_type"],
    "gqa": ["accuracy", "binary", "open", "consistency", "validity", "plausibility", "distribution"],
    "docvqa": ["anls"],
    "coco": ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"],
}


def pgm(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def read_outputs(out):
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, rows


class FakeMeteor:
    """METEOR starts a JVM for ~6 s; the rescoring run uses this stand-in (one real call per session)."""

    def __init__(self):
        self.meteor_p = SimpleNamespace(kill=lambda: None, wait=lambda: None)
        self.lock = threading.Lock()

    def compute_score(self, gts, res):
        return 0.25, [0.25] * len(gts)


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["vqav2", "gqa", "docvqa", "coco"])
def test_eval_writes_both_files_and_rescoring_them_gives_the_same_metrics(
        task_name, synthetic_data, tiny_model_dir, tmp_path, monkeypatch, one_thread):
    task = get_task(task_name)
    root = synthetic_data(task_name)
    out = tmp_path / "eval"
    result = pgm("eval", "--task", task_name, "--model-path", "tiny", "--data-root", root,
                 "--max-eval-samples", 8, "--batch-size", 4, "-o", out)
    assert result.exit_code == 0, result.output
    metrics, rows = read_outputs(out)
    assert (metrics["task"], metrics["source"], metrics["examples"], metrics["predictions"]) == (task_name, "tiny", 8, 8)
    assert list(metrics["metrics"])[:len(HEADLINE[task_name])] == HEADLINE[task_name]
    assert "Wrote" in result.output and task.title.split()[0] in result.output  # the results table
    for row in rows:
        assert {task.id_key, task.answer_key, "prompt", "references", "score"} <= set(row)
        assert isinstance(row[task.answer_key], str) and isinstance(row["score"], float)
        assert row["prompt"] not in row[task.answer_key]  # only the new tokens are decoded
    if task_name == "coco":
        # SPICE needs CoreNLP jars that are not installed here: unavailable, with the install line.
        assert metrics["metrics"]["SPICE"] is None and "stanford-corenlp" in metrics["unavailable"]["SPICE"]
        # said once, in one line (why and how to enable it), and not again as a table row
        spice = [line for line in result.output.splitlines() if "SPICE" in line]
        assert len(spice) == 1 and spice[0].startswith("SPICE skipped: it needs Java and the Stanford CoreNLP"), spice
        assert "stanford-corenlp-3.6.0-models.jar" in spice[0] and "pgm doctor" in spice[0]
        assert 0.0 <= metrics["metrics"]["METEOR"] <= 1.0
        import pycocoevalcap.meteor.meteor as meteor_module

        monkeypatch.setattr(meteor_module, "Meteor", FakeMeteor)

    # Score the predictions file back, with no model, and write the eval-server submission.
    again, submission = tmp_path / "again", tmp_path / "server" / "results.json"
    result = pgm("eval", "--task", task_name, "--predictions", out / "predictions.jsonl", "--data-root", root,
                 "--max-eval-samples", 8, "-o", again, "--submission", submission)
    assert result.exit_code == 0, result.output
    rescored, rerows = read_outputs(again)
    if task_name == "coco":
        assert rescored["metrics"].pop("METEOR") == 0.25
        metrics["metrics"].pop("METEOR")
    assert rescored["metrics"] == metrics["metrics"]
    assert rescored["notes"] == metrics["notes"] == []
    if task_name != "coco":
        assert rerows == rows
    else:  # per-image CIDEr does not involve METEOR
        assert [r["score"] for r in rerows] == [r["score"] for r in rows]

    # The submission is the official format exactly: a JSON list of objects with the two keys.
    records = json.loads(submission.read_text())
    assert isinstance(records, list) and len(records) == 8
    assert all(list(r) == [task.id_key, task.answer_key] for r in records)
    assert records == [{task.id_key: r[task.id_key], task.answer_key: r[task.answer_key]} for r in rows]


@pytest.mark.parametrize("task_name", ["vqav2", "gqa", "docvqa"])
def test_an_official_results_file_and_its_predictions_jsonl_score_the_same(task_name, synthetic_data, tmp_path):
    """Half-right answers (some needing the official normalisation), so the metrics are not trivial."""
    from paligemma_cli.config import DataConfig
    from paligemma_cli.tasks.sources import load_examples

    task = get_task(task_name)
    root = synthetic_data(task_name)
    examples = load_examples(task, DataConfig(task=task_name, data_root=root), "eval", check_images=False)
    answers = [ex.answers[0] if i % 2 == 0 else "wrong" for i, ex in enumerate(examples)]
    answers[0] = answers[0].capitalize() + "."  # right only after VQA normalisation; near-right for ANLS
    official = tmp_path / "official.json"
    official.write_text(json.dumps([{task.id_key: ex.id, task.answer_key: a} for ex, a in zip(examples, answers)]))

    first = pgm("eval", "--task", task_name, "--predictions", official, "--data-root", root, "-o", tmp_path / "a")
    assert first.exit_code == 0, first.output
    second = pgm("eval", "--task", task_name, "--predictions", tmp_path / "a" / "predictions.jsonl",
                 "--data-root", root, "-o", tmp_path / "b")
    assert second.exit_code == 0, second.output
    (a, a_rows), (b, b_rows) = read_outputs(tmp_path / "a"), read_outputs(tmp_path / "b")
    assert a["metrics"] == b["metrics"] and a_rows == b_rows
    headline = a["metrics"][task.headline]
    assert 0 < headline < (1 if task_name == "docvqa" else 100)
    assert len(a_rows) == len(examples) and 0 < sum(r["score"] for r in a_rows) < len(examples)


# ----- bad results files (no model: fast) -------------------------------------------------------

@pytest.fixture
def gqa(synthetic_data, tmp_path):
    """The synthetic GQA testdev split and a perfect results file for it (official format)."""
    root = synthetic_data("gqa")
    questions = json.loads((root / "testdev_balanced_questions.json").read_text())
    perfect = [{"questionId": qid, "prediction": q["answer"]} for qid, q in questions.items()]
    return SimpleNamespace(root=root, perfect=perfect, out=tmp_path / "out", file=tmp_path / "results.json")


def score_file(gqa, records=None, text=None):
    gqa.file.write_text(text if text is not None else json.dumps(records))
    return pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--data-root", gqa.root, "-o", gqa.out)


def test_a_perfect_official_results_file(gqa):
    result = score_file(gqa, gqa.perfect)
    assert result.exit_code == 0, result.output
    metrics, rows = read_outputs(gqa.out)
    assert metrics["metrics"]["accuracy"] == metrics["metrics"]["consistency"] == 100.0
    assert len(rows) == len(gqa.perfect) and all(r["score"] == 1.0 for r in rows)
    # a metric that cannot be computed is one line saying why, not also a table row
    assert "distribution skipped: no scored question has an answer group" in flat(result)
    assert "unavailable" not in result.output


def test_missing_ids_are_counted_scored_wrong_and_exit_zero(gqa):
    result = score_file(gqa, gqa.perfect[:12])
    assert result.exit_code == 0, result.output
    metrics, rows = read_outputs(gqa.out)
    n = len(gqa.perfect)
    assert metrics["metrics"]["accuracy"] == pytest.approx(100 * 12 / n)
    assert f"{n - 12} of {n} examples have no prediction" in flat(result) and "scored as wrong" in flat(result)
    assert any("scored as wrong" in note for note in metrics["notes"])
    assert (metrics["examples"], metrics["predictions"]) == (n, 12)


def test_some_unknown_ids_are_reported_and_ignored(gqa):
    result = score_file(gqa, gqa.perfect + [{"questionId": "nosuch", "prediction": "red"}])
    assert result.exit_code == 0, result.output
    assert f"1 of {len(gqa.perfect) + 1} predictions have ids not among the examples evaluated" in flat(result)
    assert read_outputs(gqa.out)[0]["metrics"]["accuracy"] == 100.0


def test_all_ids_unknown_is_an_error(gqa):
    result = score_file(gqa, [{"questionId": f"x{i}", "prediction": "red"} for i in range(3)])
    assert_one_line_error(result, "None of the 3 ids", "Check --task and --split")
    assert not (gqa.out / "metrics.json").exists()


def test_malformed_json_names_the_line(gqa):
    lines = [json.dumps(r) for r in gqa.perfect[:3]]
    lines[1] = lines[1][:-5]
    result = score_file(gqa, text="\n".join(lines) + "\n")
    assert_one_line_error(result, "line 2", "invalid JSON")


def test_another_tasks_format_names_the_line_and_the_keys(gqa, synthetic_data, tmp_path):
    vqa = [{"question_id": 10010, "answer": "red"}, {"question_id": 10011, "answer": "2"}]
    result = score_file(gqa, text="\n".join(json.dumps(r) for r in vqa))
    assert_one_line_error(result, "line 1", '"questionId"', '"prediction"', "vqav2 format")


def test_predictions_and_adapter_exclude_each_other(gqa, tmp_path):
    gqa.file.write_text(json.dumps(gqa.perfect))
    result = pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--adapter", tmp_path,
                 "--data-root", gqa.root, "-o", gqa.out)
    assert_one_line_error(result, "--predictions and --adapter")
