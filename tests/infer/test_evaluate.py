"""The evaluation engine: batched generation, results files, scoring and the files it writes."""

from __future__ import annotations

import json

import pytest
import torch

from paligemma_cli.config import DataConfig, ModelConfig
from paligemma_cli.tasks.sources import load_examples
from paligemma_cli.infer.evaluate import (check_prediction_ids, evaluate_model, read_predictions, score,
                                           submission_bytes, write_eval_outputs)
from paligemma_cli.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import claim_output, read_marker
from paligemma_cli.tasks import Example, get_task

LONG_QUESTION = ("answer en is the small shape on the left of the big one in the top corner of the picture "
                 "really the same colour as the frame around it?")


@pytest.fixture
def one_thread():
    # On a shared 2-core machine OpenMP's second thread mostly waits for a busy core: generation
    # of the tiny model runs ~10x slower with 2 threads than with 1 (see BENCHMARKS.md).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _examples(synthetic_data, task_name: str, n: int = 8) -> list[Example]:
    task = get_task(task_name)
    return load_examples(task, DataConfig(task=task_name, data_root=synthetic_data(task_name), max_eval_samples=n),
                         "eval")


# ----- batched generation ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "none"])
def test_batch_16_generates_exactly_what_batch_1_does(quantization, synthetic_data, tiny_model_dir, one_thread):
    """Left padding must not change greedy outputs: prompts of very different lengths in one batch."""
    from paligemma_cli.model.batches import generation_batch, to_device
    from paligemma_cli.infer.generate import generate_answers
    from paligemma_cli.model.load import load_for_inference, load_processor

    examples = _examples(synthetic_data, "gqa")
    examples[1] = Example(examples[1].id, examples[1].image, LONG_QUESTION, examples[1].answers)
    processor = load_processor("tiny")
    model = load_for_inference(ModelConfig(model_path="tiny", quantization=quantization))

    batch = generation_batch(processor, examples)
    pads = (batch["attention_mask"] == 0).sum(1)
    assert batch["attention_mask"][:, -1].all() and pads.max() >= 20  # left padding, and a lot of it

    one = list(generate_answers(model, processor, examples, max_new_tokens=8, batch_size=1))
    sixteen = list(generate_answers(model, processor, examples, max_new_tokens=8, batch_size=16))
    # ...and batches built by worker processes are the same batches.
    threes = list(generate_answers(model, processor, examples, max_new_tokens=8, batch_size=3, workers=2))
    assert sixteen == one
    assert threes == one
    assert len(set(one)) > 1  # the outputs depend on the input at all

    # The comparison can catch a padding bug: attending to the pads changes the padded rows.
    batch = to_device(batch, model)
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=0)
    unmasked = processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [u.split("\n")[0].strip() for u in unmasked] != one


class EchoModel(torch.nn.Module):
    """Stands in for a model: generate() returns the prompt followed by fixed tokens, as HF does."""

    def __init__(self, new_ids: list[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = new_ids
        self.calls: list[dict] = []

    def generate(self, input_ids, **kwargs):
        self.calls.append({"batch": input_ids.shape[0], **kwargs})
        new = torch.tensor(self.new_ids).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], dim=1)


def test_only_the_new_tokens_are_decoded_greedily(synthetic_data, tiny_model_dir):
    from paligemma_cli.infer.generate import generate_answers
    from paligemma_cli.model.load import load_processor

    processor = load_processor("tiny")
    tok = processor.tokenizer
    model = EchoModel(tok.encode(" red\nblue", add_special_tokens=False) + [tok.eos_token_id, tok.pad_token_id])
    model.train()
    examples = _examples(synthetic_data, "vqav2", n=5)
    answers = list(generate_answers(model, processor, examples, max_new_tokens=7, batch_size=2))
    assert answers == ["red"] * len(examples)  # no prompt text, cut at the newline, no specials
    assert [c["batch"] for c in model.calls] == [2, 2, 1]
    assert all(c["do_sample"] is False and c["num_beams"] == 1 and c["max_new_tokens"] == 7 for c in model.calls)
    assert model.training  # the caller's mode is restored


def test_evaluate_model_reports_progress_and_scores(synthetic_data, tiny_model_dir):
    from paligemma_cli.model.load import load_processor

    class Recorder(Events):
        def __init__(self):
            self.log = []

        def eval_start(self, total, description):
            self.log.append(("start", total))

        def eval_advance(self, count):
            self.log.append(("advance", count))

        def eval_end(self, metrics):
            self.log.append(("end", metrics["accuracy"]))

    processor = load_processor("tiny")
    examples = _examples(synthetic_data, "vqav2", n=5)
    model = EchoModel(processor.tokenizer.encode(" red", add_special_tokens=False) + [1])
    events = Recorder()
    result = evaluate_model(get_task("vqav2"), model, processor, examples, max_new_tokens=4, batch_size=4,
                            events=events)
    red = [ex for ex in examples if ex.answers[0] == "red"]
    assert events.log[0] == ("start", len(examples))
    assert sum(n for kind, n in events.log if kind == "advance") == len(examples)
    assert events.log[-1] == ("end", pytest.approx(100 * len(red) / len(examples)))
    assert [r["answer"] for r in result.rows] == ["red"] * len(examples)
    assert result.examples == len(examples)


# ----- results files -----------------------------------------------------------------------------

def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_json_list_and_json_lines_read_the_same(tmp_path):
    task = get_task("vqav2")
    records = [{"question_id": 11, "answer": "red"}, {"question_id": "12", "answer": "2",
                                                      "prompt": "p", "references": ["2"], "score": 1.0}]
    as_list = _write(tmp_path / "a.json", json.dumps(records, indent=2))
    as_lines = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    expected = {11: "red", 12: "2"}  # ids normalised to the official int, extra keys ignored
    assert read_predictions(task, as_list) == (expected, [])
    assert read_predictions(task, as_lines) == (expected, [])


@pytest.mark.parametrize("text, needles", [
    ('{"questionId": "a", "prediction": "x"}\n{"questionId": "b", "prediction": \n', ["line 2", "invalid JSON"]),
    ('[\n {"questionId": "a", "prediction": "x"},\n {"questionId": "b"\n]', ["line 4", "invalid JSON"]),
    ('[{"questionId": "a", "prediction": "x"}, {"questionId": "b" "prediction": "y"}]', ["line 1 column 61"]),
    ('{"question_id": 1, "answer": "x"}\n', ["line 1", '"questionId"', '"prediction"', "vqav2 format"]),
    ('[{"questionId": "a", "prediction": "x"}, {"questionId": "b", "answer": "y"}]',
     ["item 2", '"prediction"', "docvqa format"]),
    ('{"questionId": "a", "prediction": null}\n', ["line 1", '"prediction" must be a string']),
    # A number is not its text: vqaEval.py and the RRC script stop on one, GQA's eval.py counts it wrong.
    ('{"questionId": "a", "prediction": "2"}\n{"questionId": "b", "prediction": 2}\n',
     ["line 2", '"prediction" must be a string (got 2)', 'as a JSON string (e.g. "2")']),
    ('[{"questionId": "a", "prediction": 2.5}]', ["item 1", "(got 2.5)"]),
    ('["yes", "no"]', ["item 1", "not an object"]),
    ('{\n  "a": "yes",\n  "b": "no"\n}\n', ["line 1", "Got keys [a, b]"]),
    ("\n\n", ["holds no predictions"]),
])
def test_bad_results_files_are_one_clear_error(tmp_path, text, needles):
    path = _write(tmp_path / "results.json", text)
    with pytest.raises(PgmError) as info:
        read_predictions(get_task("gqa"), path)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_unreadable_results_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PgmError, match="not UTF-8"):
        read_predictions(get_task("gqa"), path)
    with pytest.raises(PgmError, match="Cannot read"):
        read_predictions(get_task("gqa"), tmp_path / "absent.json")


@pytest.mark.parametrize("fmt", ["list", "lines"])
def test_ids_are_converted_only_exactly(tmp_path, fmt):
    """A float id such as 10010.5 is not question 10010: it stays as written and is reported."""
    records = [{"question_id": 10010.5, "answer": "a"}, {"question_id": 10011.0, "answer": "b"},
               {"question_id": "10012", "answer": "c"}, {"question_id": 10013, "answer": "d"}]
    text = json.dumps(records) if fmt == "list" else "\n".join(map(json.dumps, records))
    predictions, _ = read_predictions(get_task("vqav2"), _write(tmp_path / "r.json", text))
    assert predictions == {10010.5: "a", 10011: "b", 10012: "c", 10013: "d"}
    assert 10010 not in predictions
    examples = [Example(id=10010, image=tmp_path / "x.jpg", prefix="p", answers=["a"])]
    with pytest.raises(PgmError, match=r"first: 10010\.5"):
        check_prediction_ids({10010.5: "a"}, examples, {}, "f")


def test_repeated_ids_are_noted(tmp_path):
    path = _write(tmp_path / "r.jsonl", '{"questionId": "a", "prediction": "x"}\n{"questionId": "a", "prediction": "y"}\n')
    predictions, notes = read_predictions(get_task("gqa"), path)
    assert predictions == {"a": "y"} and "1 results" in notes[0]


def test_unknown_ids(synthetic_data):
    examples = _examples(synthetic_data, "vqav2")
    known = {ex.id: "red" for ex in examples[:2]}
    assert check_prediction_ids(known, examples, {}, "f") == []
    notes = check_prediction_ids({**known, 999: "x"}, examples, {}, "f")
    assert notes and "1 of 3 predictions" in notes[0] and "999" in notes[0]
    with pytest.raises(PgmError, match="None of the 2 ids"):
        check_prediction_ids({998: "x", 999: "y"}, examples, {}, "f")
    # GQA's scorer also uses the entailed questions of the all-questions file: those ids are known.
    assert check_prediction_ids({"q9": "x"}, examples, {"questions": {"q9": {}}}, "f") == []


# ----- scoring ------------------------------------------------------------------------------------

def test_missing_predictions_are_counted_scored_wrong_and_noted():
    task = get_task("vqav2")
    examples = [Example(id=i, image=None, prefix="answer en q", answers=["red"] * 10, meta={"answer_type": "other"})
                for i in (1, 2, 3, 4)]
    result = score(task, {1: "red", 2: "blue", 3: "red"}, examples, {})
    assert result.metrics["accuracy"] == pytest.approx(50.0)  # 2 right of 4; the missing one counts as wrong
    assert any("1 of 4 examples have no prediction" in n and "scored as wrong" in n for n in result.notes)
    assert [r["question_id"] for r in result.rows] == [1, 2, 3]
    assert [r["score"] for r in result.rows] == [1.0, 0.0, 1.0]
    assert result.rows[0]["references"] == ["red"] * 10 and result.rows[0]["prompt"] == "answer en q"


def test_gqa_metrics_json_has_the_official_keys_first(synthetic_data):
    task = get_task("gqa")
    root = synthetic_data("gqa")
    examples = _examples(synthetic_data, "gqa", n=100)
    extra = task.load_score_extra(root, "testdev")
    truth = {ex.id: ex.answers[0] for ex in examples}
    result = score(task, truth, examples, extra)
    assert list(result.metrics) == ["accuracy", "binary", "open", "consistency", "validity", "plausibility",
                                    "distribution", "per_structural_type", "per_semantic_type", "per_steps_number",
                                    "per_words_number"]
    # Synthetic programs: select + query color, select + verify color: two steps each.
    assert result.metrics["per_steps_number"] == {2: 100.0}
    assert set(result.metrics["per_words_number"]) == {4, 5}  # "what color is the shape?", "is the shape red?"
    assert result.metrics["accuracy"] == result.metrics["consistency"] == result.metrics["validity"] == 100.0
    # The synthetic questions carry no global answer group: distribution says why it is missing.
    assert result.metrics["distribution"] is None and "groups.global" in result.unavailable["distribution"]
    assert result.notes == []

    # Without the choices file validity/plausibility are unavailable; a question whose entailed
    # question is not evaluated is reported.
    queries = [ex for ex in examples if ex.id.endswith("0")]
    result = score(task, truth, queries, {"questions": extra["questions"]})
    assert result.metrics["validity"] is None and "choices" in result.unavailable["plausibility"]
    assert any("entailed questions are not in the scored question set" in n for n in result.notes)

    # Official questions not on disk (hub / JSONL source): no binary split, no consistency, no
    # programs; the question texts still give the words numbers.
    result = score(task, truth, examples, {})
    assert result.metrics["binary"] is None and result.metrics["consistency"] is None
    assert result.metrics["per_steps_number"] is None and "per_steps_number" in result.unavailable
    assert set(result.metrics["per_words_number"]) == {4, 5}
    assert result.metrics["accuracy"] == 100.0


def test_test_split_without_answers_is_not_scored():
    task = get_task("vqav2")
    examples = [Example(id=i, image=None, prefix="answer en q", answers=[]) for i in (1, 2)]
    result = score(task, {1: "a", 2: "b"}, examples, {})
    assert result.metrics == {} and "no reference answers" in result.notes[0]
    assert [r["answer"] for r in result.rows] == ["a", "b"]


@pytest.mark.skipif(__import__("shutil").which("java") is None, reason="pycocoevalcap needs Java")
def test_headline_only_scores_coco_by_the_same_cider_alone():
    """pgm study passes extra["headline_only"]: a COCO cell computes CIDEr alone, equal to the full run's."""
    task = get_task("coco")
    examples = [Example(id=i, image=None, prefix="caption en", answers=refs) for i, refs in
                [(1, ["a red circle on a blue square"]), (2, ["two green dots", "a pair of green dots"])]]
    predictions = {1: "a red circle on a square", 2: "green dots"}
    full = score(task, predictions, examples, {})
    only = score(task, predictions, examples, {"headline_only": True})
    assert set(full.metrics) > {"CIDEr", "METEOR"} and only.metrics == {"CIDEr": full.metrics["CIDEr"]}
    assert [r["score"] for r in only.rows] == [r["score"] for r in full.rows]


# ----- outputs ------------------------------------------------------------------------------------

def test_outputs_and_the_submission_format(tmp_path):
    task = get_task("coco")
    from paligemma_cli.infer.evaluate import EvalResult

    rows = [{"image_id": 7, "caption": "a cat", "prompt": "caption en", "references": ["a cat"], "score": 1.5}]
    result = EvalResult({"CIDEr": 1.5, "SPICE": None, "odd": float("nan")}, rows, ["a note"],
                        {"SPICE": "install CoreNLP"}, examples=2, predictions_read=3)
    with claim_output(tmp_path / "out", "eval") as output:
        written = write_eval_outputs(output, task, result, info={"split": "val2017", "source": "x"})
    assert [p.name for p in written] == ["predictions.jsonl", "metrics.json"]
    assert json.loads(submission_bytes(task, result)) == [{"image_id": 7, "caption": "a cat"}]
    assert read_marker(tmp_path / "out")["written"] == ["predictions.jsonl", "metrics.json"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"] == {"CIDEr": 1.5, "SPICE": None, "odd": None}
    assert metrics["unavailable"] == {"SPICE": "install CoreNLP"}
    assert (metrics["examples"], metrics["predictions_scored"], metrics["predictions_read"], metrics["notes"]) == \
        (2, 1, 3, ["a note"])
    assert json.loads((tmp_path / "out" / "predictions.jsonl").read_text()) == rows[0]



# ----- inside pgm train ---------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_steps_logs_the_metric_and_keeps_the_best_adapter(tmp_path, synthetic_data, tiny_model_dir,
                                                               monkeypatch, one_thread):
    """`pgm train --eval-steps 1` runs the real evaluation at each step and keeps best/ by the metric.

    The tiny model's answers score 0 at every step, so the headline metric is replaced by a
    scripted sequence (10, 30, 20) after the real generation and scoring have run.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    import paligemma_cli.infer.evaluate as evaluate
    from paligemma_cli.config import build_run
    from paligemma_cli.train.loop import train

    real, scripted, adapters = evaluate.evaluate_model, iter([10.0, 30.0, 20.0]), {}

    def scripted_eval(task, model, processor, examples, **kwargs):
        result = real(task, model, processor, examples, **kwargs)
        assert len(result.rows) == len(examples) == 4 and model.training  # generated, mode restored
        result.metrics["accuracy"] = value = next(scripted)
        adapters[value] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", scripted_eval)
    out = tmp_path / "run"
    result = train(build_run(dict(task="vqav2", model_path="tiny", data_root=str(synthetic_data("vqav2")),
                                  output_dir=str(out), batch_size=2, gradient_accumulation_steps=1, max_steps=3,
                                  eval_steps=1, max_eval_samples=4, learning_rate=1e-2, save_steps=100)))
    assert [(e["step"], e["accuracy"]) for e in result.eval_history] == [(1, 10.0), (2, 30.0), (3, 20.0)]
    assert result.best == {"step": 2, "accuracy": 30.0}
    best = load_file(str(out / "best" / "adapter_model.safetensors"))
    assert best.keys() == adapters[30.0].keys()
    assert all(torch.equal(best[k], adapters[30.0][k]) for k in best)
    assert not all(torch.equal(best[k], adapters[20.0][k]) for k in best)  # not simply the last one
    assert (out / "best" / "processor_config.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".pgm-run.json"]  # nothing staged left
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval"]["accuracy"]) for r in logged if "eval" in r] == [(1, 10.0), (2, 30.0), (3, 20.0)]
