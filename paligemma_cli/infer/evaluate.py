"""Evaluation: generate (or read) predictions, score them with the task's official metric, write them.

Model predictions and a results file go through the same scorer: the model path first turns its
answers into the official result records, so `pgm eval --predictions predictions.jsonl` gives
back the same metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Hashable, Sequence

import msgspec

from paligemma_cli.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import Output
from paligemma_cli.tasks import Example, Task
from paligemma_cli.tasks.records import paused_gc


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # a metric that could not be computed is None (see `unavailable`)
    rows: list[dict[str, Any]]  # official record + prompt, references, per-example score
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> why / how to get it
    examples: int = 0  # examples in the evaluated split (rows holds those with a prediction)
    # Distinct ids read (a results file may hold more than it scores: GQA's unbalanced questions,
    # which only consistency uses, or ids of other examples).
    predictions_read: int = 0


def score(task: Task, predictions: dict[Hashable, str], examples: Sequence[Example],
          extra: dict[str, Any]) -> EvalResult:
    """Score {id: prediction} against `examples`; missing predictions count as wrong and are reported."""
    if examples and not any(ex.answers for ex in examples):  # a test split: nothing to score
        rows = [{**task.result_record(ex, predictions[ex.id]), "prompt": ex.prefix}
                for ex in examples if ex.id in predictions]
        return EvalResult({}, rows, [f"The {task.name} split has no reference answers; predictions "
                                     "were not scored (use --submission for the eval server)."],
                          examples=len(examples), predictions_read=len(predictions))
    notes = []
    missing = [ex.id for ex in examples if ex.id not in predictions]
    if missing:
        notes.append(f"{len(missing)} of {len(examples)} examples have no prediction (first: {missing[0]!r}); "
                     "they are scored as wrong.")
    result = task.score(predictions, examples, extra)
    rows = []
    for ex in examples:
        pred = predictions.get(ex.id)
        if pred is None:
            continue
        rows.append({**task.result_record(ex, pred), "prompt": ex.prefix, "references": ex.answers,
                     "score": result.per_example.get(ex.id)})
    return EvalResult(result.metrics, rows, notes + result.notes, dict(result.unavailable), len(examples),
                      len(predictions))


def evaluate_model(task: Task, model, processor, examples: Sequence[Example], *, max_new_tokens: int,
                   batch_size: int, extra: dict[str, Any] | None = None,
                   events: Events | None = None, workers: int = 0) -> EvalResult:
    """Greedy-generate an answer per example (batches built by `workers` processes) and score them."""
    from paligemma_cli.infer.generate import generate_answers

    events = events or Events()
    events.eval_start(len(examples), f"{task.name}: generating")
    # list(): run the generator to its end, so it puts the model back in its training mode now.
    answers = list(generate_answers(model, processor, examples, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, on_batch=events.eval_advance, workers=workers))
    predictions = {ex.id: ans for ex, ans in zip(examples, answers)}
    result = score(task, predictions, examples, extra or {})
    events.eval_end(result.metrics)
    return result


def read_predictions(task: Task, path: Path) -> tuple[dict[Hashable, str], list[str]]:
    """Read a results file: a JSON list, or JSON lines, of the task's official result records.

    Returns {id: prediction} and notes (repeated ids). Malformed JSON, a record of the wrong
    format and an empty file are errors naming the line (or list item).
    """
    path = Path(path)
    source = f"--predictions {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PgmError(f"Cannot read {source}: {exc.strerror}.", "Check the path.") from None
    except UnicodeDecodeError as exc:
        raise PgmError(f"{source} is not UTF-8 text (byte {exc.start}).",
                       "Give the JSON results file, not an archive or a binary.") from None
    predictions, count = _read_predictions_fast(task, text)
    if not predictions:  # not the plain official shape: the general reader names what is wrong
        records = _result_records(text, source)
        if not records:
            raise PgmError(f"{source} holds no predictions.", "Is it the right file?")
        predictions, count = task.parse_results(records, source), len(records)
    notes = []
    if len(predictions) < count:
        notes.append(f"{count - len(predictions)} results in {source} repeat an id; the last one of "
                     "each is used.")
    return predictions, notes


def _read_predictions_fast(task: Task, text: str) -> tuple[dict[Hashable, str], int]:
    """{id: prediction} of a well-formed results file (JSON list or lines), decoding only the two keys.

    Anything else (bad JSON, another format, a non-text answer) returns nothing, and the general
    reader finds and names the problem.
    """
    result = msgspec.defstruct("Result", [("id", Any), ("answer", str)],
                               rename={"id": task.id_key, "answer": task.answer_key})
    try:
        if text.lstrip().startswith("["):
            records = msgspec.json.decode(text, type=list[result])
        else:
            records = msgspec.json.Decoder(result).decode_lines(text)
    except msgspec.DecodeError:
        return {}, 0
    ids = list(map(attrgetter("id"), records))
    keys = None
    if not {float, bool} & set(map(type, ids)):  # int(10010.5) would be 10010: a wrong id
        try:  # map() keeps the 2 M ids of GQA's all-questions results in C
            keys = list(map(task.id_type, ids))
        except (TypeError, ValueError):
            pass
    if keys is None:  # ids that stay as they are (see Task.normalise_id)
        keys = [task.normalise_id(i) for i in ids]
    return dict(zip(keys, map(attrgetter("answer"), records))), len(records)


def _result_records(text: str, source: str) -> list[tuple[str, Any]]:
    """(where, record) pairs from a JSON list ("item N") or JSON lines ("line N")."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            # Result files for the servers are often one long line: the column finds the spot.
            raise PgmError(f"{source} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}).",
                           "Fix the file; it must be a JSON list or one JSON object per line.") from None
        whole = None  # JSON lines: parsed line by line below
    if isinstance(whole, list):
        return [(f"item {i + 1}", rec) for i, rec in enumerate(whole)]
    if whole is not None:  # one JSON value: a one-line file, or a pretty-printed object
        return [("line 1", whole)]
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PgmError(f"{source} line {lineno}: invalid JSON ({exc.msg}).",
                           "Each line must be one JSON object (or give one JSON list).") from None
    return records


def check_prediction_ids(predictions: dict[Hashable, str], examples: Sequence[Example],
                         extra: dict[str, Any], source: str) -> list[str]:
    """Unknown ids: all unknown is an error (wrong split or task); some unknown is reported.

    Ids of the scorer's wider question set count as known (GQA scores consistency on entailed
    questions of <split>_all_questions.json, which official result files include).
    """
    ids, questions = {ex.id for ex in examples}, extra.get("questions") or {}
    unknown = predictions.keys() - ids  # set arithmetic in C: GQA results hold 2 M ids
    if unknown and questions:
        unknown -= questions.keys()
    if unknown:  # in the file's order, to name the first
        unknown_set = set(unknown)
        unknown = [k for k in predictions if k in unknown_set]
    if unknown and len(unknown) == len(predictions):
        raise PgmError(f"None of the {len(predictions)} ids in {source} is among the {len(examples)} "
                       f"examples evaluated (first: {unknown[0]!r}).",
                       "Check --task and --split (and --max-eval-samples, which keeps the first N only).")
    if unknown:
        return [f"{len(unknown)} of {len(predictions)} predictions have ids not among the examples evaluated "
                f"(first: {unknown[0]!r}); they are ignored."]
    return []


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_eval_outputs(output: Output, task: Task, result: EvalResult, *, info: dict[str, Any],
                       folder: Path | None = None) -> list[Path]:
    """predictions.jsonl (official keys + references + score) and metrics.json, staged in `output`
    (or written into `folder`, a staged sub-folder of it, for one task of several)."""
    # One C call for all rows (214k for VQAv2 val); msgspec writes NaN/inf as null, as _json_safe does.
    files = {"predictions.jsonl": msgspec.json.Encoder().encode_lines(result.rows),
             "metrics.json": json.dumps(_json_safe({
                 "task": task.name, **info, "examples": result.examples,
                 # Scored: predictions of the evaluated examples (GQA: the balanced questions). Read: every
                 # distinct id given, including those only consistency uses or that match no example.
                 "predictions_scored": len(result.rows) if result.metrics else 0,
                 "predictions_read": result.predictions_read,
                 "headline": {"metric": task.headline, "score_0_100": task.headline_0_100(result.metrics)},
                 "metrics": result.metrics, "unavailable": result.unavailable, "notes": result.notes}), indent=2)}
    if folder is None:
        return [output.write(name, data) for name, data in files.items()]
    for name, data in files.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return [output.path / folder.name / name for name in files]


def evaluated(task: Task, data, *, model_cfg=None, adapter: Path | None = None,
              predictions_file: Path | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
    """metrics.json's record of what was evaluated: `source` (the results file, or the model +
    adapter) and `evaluated`: the model, the adapter or the recipe of a pgm merge, the quantisation,
    the new-token limit and the prompt."""
    split = data.eval_split or task.eval_split
    if predictions_file is not None:
        return {"split": split, "source": str(predictions_file), "evaluated": {"predictions": str(predictions_file)}}
    recipe = None
    recipe_file = Path(model_cfg.model_path).expanduser() / "pgm_merge.json"
    if recipe_file.is_file():
        try:
            recipe = json.loads(recipe_file.read_text())
        except ValueError:
            recipe = f"{recipe_file} is not valid JSON"
    source = model_cfg.model_path + (f" + {adapter}" if adapter else "")
    return {"split": split, "source": source, "evaluated": {
        "model": model_cfg.model_path, "adapter": None if adapter is None else str(adapter), "merge_recipe": recipe,
        "quantization": model_cfg.quantization, "compute_dtype": model_cfg.compute_dtype,
        "max_new_tokens": max_new_tokens or task.max_new_tokens, "prompt": data.prompt or task.prompt_template}}


def submission_bytes(task: Task, result: EvalResult) -> bytes:
    """Exactly the eval server's format: a JSON list of objects with the two official keys."""
    return msgspec.json.encode([{task.id_key: r[task.id_key], task.answer_key: r[task.answer_key]}
                                for r in result.rows])


def eval_inputs(task: Task, data, *, images: bool = True, always_normalize: bool = False,
                anls_variant: str = "rrc", events: Events | None = None) -> tuple[list[Example], dict[str, Any]]:
    """The examples of `task`'s eval split and what its scorer needs beyond them (`extra`), read once.
    `images`: check every image opens first (scoring a results file never opens one)."""
    from paligemma_cli.tasks.sources import check_image_files, load_examples, split_for

    split = split_for(task, data, "eval")
    examples = load_examples(task, data, "eval", check_images=False)
    if images:
        check_image_files(examples, events)
    with paused_gc():
        extra = task.load_score_extra(Path(data.data_root), split) if data.data_root is not None else {}
    extra["always_normalize"], extra["anls_variant"] = always_normalize, anls_variant
    return examples, extra


def run_evaluation(task: Task, data, *, model_cfg=None, adapter: Path | None = None,
                   predictions_file: Path | None = None, max_new_tokens: int | None = None,
                   batch_size: int = 16, always_normalize: bool = False, anls_variant: str = "rrc",
                   events: Events | None = None) -> EvalResult:
    """`pgm eval`: score a results file, or generate with the model (+ adapter) and score."""
    if predictions_file is not None:
        examples, extra = eval_inputs(task, data, images=False, always_normalize=always_normalize,
                                      anls_variant=anls_variant, events=events)
        with paused_gc():  # a results file is millions of small objects and scoring makes no cycles
            predictions, notes = read_predictions(task, predictions_file)
            notes += check_prediction_ids(predictions, examples, extra, f"--predictions {predictions_file}")
            result = score(task, predictions, examples, extra)
        result.notes = notes + result.notes
        return result
    (result,) = evaluate_tasks([(task, data)], model_cfg=model_cfg, adapter=adapter, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, always_normalize=always_normalize,
                               anls_variant=anls_variant, events=events)
    return result


def evaluate_tasks(jobs: Sequence[tuple[Task, Any]], *, model_cfg, adapter: Path | None = None,
                   max_new_tokens: int | None = None, batch_size: int = 16, always_normalize: bool = False,
                   anls_variant: str = "rrc", events: Events | None = None) -> list[EvalResult]:
    """Generate and score on each (task, DataConfig) with one model load: every task's data is read
    and its images checked first, so a bad data root fails before the model loads."""
    from paligemma_cli.model.loader import resolve_workers
    from paligemma_cli.model.load import load_for_inference, load_processor

    inputs = [eval_inputs(task, data, always_normalize=always_normalize, anls_variant=anls_variant, events=events)
              for task, data in jobs]
    processor = load_processor(model_cfg.model_path, model_cfg.revision)
    model = load_for_inference(model_cfg, adapter)
    return [evaluate_model(task, model, processor, examples, max_new_tokens=max_new_tokens or task.max_new_tokens,
                           batch_size=batch_size, extra=extra, events=events,
                           workers=resolve_workers(data.dataloader_workers))
            for (task, data), (examples, extra) in zip(jobs, inputs)]
