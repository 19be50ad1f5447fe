"""`pgm eval` end to end on the tiny model: both files per task, rescoring them, bad results files."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
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
    assert (metrics["task"], metrics["source"], metrics["examples"], metrics["predictions_scored"],
            metrics["predictions_read"]) == (task_name, "tiny", 8, 8, 8)
    assert list(metrics["metrics"])[:len(HEADLINE[task_name])] == HEADLINE[task_name]
    # what was evaluated, and the headline on the 0-100 scale
    assert metrics["evaluated"] == {"model": "tiny", "adapter": None, "merge_recipe": None, "quantization": "4bit",
                                    "compute_dtype": "auto", "max_new_tokens": task.max_new_tokens,
                                    "prompt": task.prompt_template}
    headline = metrics["metrics"][task.headline]
    assert metrics["headline"] == {"metric": task.headline, "score_0_100": headline * (
        100 if task_name in ("docvqa", "coco") else 1)}
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
    assert (metrics["examples"], metrics["predictions_scored"], metrics["predictions_read"]) == (n, 12, 12)


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


def _disk_full_half_way(monkeypatch):
    """The write call fails as on a full disk, after writing half the bytes (a real partial file)."""
    real = Path.write_bytes

    def write_bytes(self, data):
        real(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_a_full_disk_is_one_line_and_a_rerun_is_not_refused(gqa, monkeypatch):
    assert score_file(gqa, gqa.perfect).exit_code == 0
    earlier = {p.name: p.read_bytes() for p in gqa.out.iterdir()}
    _disk_full_half_way(monkeypatch)
    result = pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--data-root", gqa.root, "-o", gqa.out,
                 "--overwrite")
    assert_one_line_error(result, f"Writing {gqa.out / 'predictions.jsonl'} failed: No space left on device "
                                  "(it needs ", "nothing half-written was left")
    assert {p.name: p.read_bytes() for p in gqa.out.iterdir()} == earlier  # the earlier evaluation, intact
    fresh = gqa.out.parent / "fresh"
    assert_one_line_error(pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--data-root", gqa.root,
                              "-o", fresh), "No space left on device")
    assert not fresh.exists()  # no truncated predictions.jsonl to make the rerun refuse
    monkeypatch.undo()
    result = pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--data-root", gqa.root, "-o", fresh)
    assert result.exit_code == 0, result.output


def test_paths_and_notes_are_printed_verbatim(gqa, tmp_path):
    out = tmp_path / "[bold]out[/]"
    result = pgm("eval", "--task", "gqa", "--predictions", gqa.file.parent / "[red]missing.json", "--data-root",
                 gqa.root, "-o", out)
    assert_one_line_error(result, "[red]missing.json")
    gqa.file.write_text(json.dumps(gqa.perfect[:1] + [{"questionId": "[b]nope[/b]", "prediction": "x"}]))
    result = pgm("eval", "--task", "gqa", "--predictions", gqa.file, "--data-root", gqa.root, "-o", out,
                 "--submission", out / "[i]sub.json")
    assert result.exit_code == 0, result.output
    text = flat(result)
    assert "'[b]nope[/b]'" in text and f"Wrote {out / 'predictions.jsonl'}" in text and "[i]sub.json" in text


def test_a_results_file_with_other_keys_is_named_verbatim(gqa):
    # The keys are user text: printed as they are, not read as console markup ("[results]" is
    # also a valid markup tag, which used to vanish from the line).
    result = score_file(gqa, [{"results": [{"questionId": "a", "prediction": "x"}]}])
    assert_one_line_error(result, "item 1", "Got keys [results]; is --task right?")
    result = score_file(gqa, text='{"[bold]questionId": "a", "prediction": "x"}\n')
    assert_one_line_error(result, "line 1", "Got keys [[bold]questionId, prediction]; is --task right?")


def test_metric_tables_show_names_verbatim_and_summarise_long_breakdowns(capsys):
    from paligemma_cli.cli.eval import BREAKDOWN_ROWS, show_metrics

    many = {f"[b]type {i}": float(i) for i in range(BREAKDOWN_ROWS + 1)}
    show_metrics("[red]VQAv2", {"accuracy": 50.0, "per_answer_type": {"[i]yes/no": 25.0}, "per_question_type": many})
    out = capsys.readouterr().out
    assert "[red]VQAv2" in out and "per_answer_type/[i]yes/no" in out and "25.0000" in out
    assert f"per_question_type │ {BREAKDOWN_ROWS + 1} types (--breakdown)" in " ".join(out.split())
    assert "[b]type 0" not in out
    show_metrics("VQAv2", {"per_question_type": many}, breakdown=True)
    out = capsys.readouterr().out
    assert all(f"per_question_type/{name}" in out for name in many)


def _docvqa_files(root, entries):
    """A DocVQA-format annotation file (no images: scoring a results file never opens one)."""
    data = [{"questionId": i, "question": f"q{i}", "image": f"documents/d{i}.png", "docId": i, **entry}
            for i, entry in enumerate(entries, 1)]
    (root / "val").mkdir(parents=True)
    (root / "val" / "val_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "data": data}))


def test_docvqa_scores_as_the_rrc_server_by_default_and_the_paper_on_request(tmp_path):
    # The worked cases: 0.5 and 0.8 on the server, 0 in the paper; one exact answer.
    entries = [{"answers": ["ln"], "question_types": ["form"], "answer_type": ["image span"]},
               {"answers": ["qt"], "question_types": ["form", "layout"], "answer_type": ["image span"],
                "evidence": ["textual"], "operation/reasoning": ["counting"]},
               {"answers": ["abc", "x"], "question_types": ["layout"], "answer_type": ["non span"]}]
    _docvqa_files(tmp_path / "docvqa", entries)
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"questionId": 1, "answer": "sn"}, {"questionId": 2, "answer": " yt  "},
                                   {"questionId": 3, "answer": "ABC"}]))
    server = pgm("eval", "--task", "docvqa", "--predictions", results, "--data-root", tmp_path / "docvqa",
                 "-o", tmp_path / "rrc")
    assert server.exit_code == 0, server.output
    metrics = read_outputs(tmp_path / "rrc")[0]["metrics"]
    expected = {"anls": (0.5 + 0.8 + 1) / 3, "per_question_type": {"form": 0.65, "layout": 0.9},
                "per_answer_type": {"image span": 0.65, "non span": 1.0}, "per_evidence_type": {"textual": 0.8},
                "per_operation_type": {"counting": 0.8}}
    assert list(metrics) == list(expected) and metrics["anls"] == pytest.approx(expected.pop("anls"))
    assert all(metrics[name] == pytest.approx(means) for name, means in expected.items())
    assert "per_question_type/layout" in server.output

    paper = pgm("eval", "--task", "docvqa", "--predictions", results, "--data-root", tmp_path / "docvqa",
                "-o", tmp_path / "paper", "--anls-variant", "paper")
    assert paper.exit_code == 0, paper.output
    metrics = read_outputs(tmp_path / "paper")[0]["metrics"]
    assert "anls" not in metrics and metrics["anls_paper"] == pytest.approx(1 / 3)
    assert metrics["per_question_type"] == pytest.approx({"form": 0.0, "layout": 0.5})
    assert "anls_paper" in paper.output


def test_vqav2_reports_accuracy_per_question_type(synthetic_data, tmp_path):
    root = synthetic_data("vqav2")
    task = get_task("vqav2")
    examples = task.load_official(root, "val2014")
    results = tmp_path / "results.json"
    # Right on the colour questions ("what ..."), wrong on the count questions ("how ...").
    answers = [ex.answers[0] if ex.meta["question"].startswith("what") else "wrong" for ex in examples]
    results.write_text(json.dumps([{"question_id": ex.id, "answer": a} for ex, a in zip(examples, answers)]))
    result = pgm("eval", "--task", "vqav2", "--predictions", results, "--data-root", root, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    metrics = read_outputs(tmp_path / "out")[0]["metrics"]
    assert metrics["per_question_type"] == {"what": 100.0, "how": 0.0}
    assert "per_question_type/how" in result.output


def test_several_tasks_load_the_model_once_and_match_single_task_runs(synthetic_data, tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    import paligemma_cli.model.load as load

    loads = []
    real = load.load_model
    monkeypatch.setattr(load, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    roots = {t: synthetic_data(t) for t in ("vqav2", "gqa")}
    out = tmp_path / "many"
    result = pgm("eval", "--task", f"vqav2={roots['vqav2']}", "--task", f"gqa={roots['gqa']}", "--model-path", "tiny",
                 "--max-eval-samples", 6, "--batch-size", 3, "-o", out)
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    assert "pgm eval (0-100" in result.output and "vqav2" in result.output and "gqa" in result.output
    for task in ("vqav2", "gqa"):
        single = tmp_path / f"one-{task}"
        assert pgm("eval", "--task", task, "--data-root", roots[task], "--model-path", "tiny",
                   "--max-eval-samples", 6, "--batch-size", 3, "-o", single).exit_code == 0
        (m_many, rows_many), (m_one, rows_one) = read_outputs(out / task), read_outputs(single)
        assert rows_many == rows_one and m_many["metrics"] == m_one["metrics"]
        assert m_many["evaluated"] == m_one["evaluated"] and m_many["task"] == task


@pytest.mark.parametrize("args,expected", [
    (["--task", "vqav2", "--task", "gqa"], "--task vqav2 is given with other --task values"),
    (["--task", "vqav2=ROOT", "--task", "vqav2=ROOT"], "--task vqav2 is given twice"),
    (["--task", "vqav2=ROOT", "--data-root", "ROOT"], "--data-root and --task TASK=DATA_ROOT both name a data root"),
    (["--task", "vqav2=ROOT", "--task", "gqa=ROOT/nowhere"], "nowhere does not exist"),
    (["--task", "vqav2=ROOT", "--task", "gqa=ROOT", "--predictions", "x.json"], "--predictions is for one --task"),
])
def test_several_task_mistakes_are_one_line(args, expected, synthetic_data, tmp_path):
    root = str(synthetic_data("vqav2"))
    result = pgm("eval", *[a.replace("ROOT", root) for a in args], "-o", tmp_path / "out")
    assert result.exit_code == 1 and expected in result.output, result.output
    assert not (tmp_path / "out").exists()
