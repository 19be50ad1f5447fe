"""Evaluation: generate (or read) predictions, score them with the task's official metric, write them.

Model predictions and a results file go through the same scorer: the model path first turns its
answers into the official result records, so `pgm eval --predictions predictions.jsonl` gives
back the same metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

from paligemma_cli.engine.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks import Example, Task


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]  # official record + prompt, references, per-example score
    notes: list[str] = field(default_factory=list)


def score(task: Task, predictions: dict[Hashable, str], examples: Sequence[Example],
          extra: dict[str, Any]) -> EvalResult:
    """Score {id: prediction} against `examples`; missing predictions count as wrong and are reported."""
    if examples and not any(ex.answers for ex in examples):  # a test split: nothing to score
        rows = [{**task.result_record(ex, predictions[ex.id]), "prompt": ex.prefix}
                for ex in examples if ex.id in predictions]
        return EvalResult({}, rows, [f"The {task.name} split has no reference answers; predictions "
                                     "were not scored (use --submission for the eval server)."])
    known = {ex.id for ex in examples}
    notes = []
    missing = len(known - set(predictions))
    if missing:
        notes.append(f"{missing} of {len(known)} examples have no prediction; they are scored as wrong.")
    result = task.score(predictions, examples, extra)
    rows = []
    for ex in examples:
        pred = predictions.get(ex.id)
        if pred is None:
            continue
        rows.append({**task.result_record(ex, pred), "prompt": ex.prefix, "references": ex.answers,
                     "score": result.per_example.get(ex.id)})
    return EvalResult(result.metrics, rows, notes + result.notes)


def evaluate_model(task: Task, model, processor, examples: Sequence[Example], *, max_new_tokens: int,
                   batch_size: int, extra: dict[str, Any] | None = None,
                   events: Events | None = None) -> EvalResult:
    """Greedy-generate an answer per example and score them."""
    from paligemma_cli.engine.generate import generate_answers

    events = events or Events()
    events.eval_start(len(examples), f"{task.name}: generating")
    answers = generate_answers(model, processor, examples, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, on_batch=events.eval_advance)
    predictions = {ex.id: ans for ex, ans in zip(examples, answers)}
    result = score(task, predictions, examples, extra or {})
    events.eval_end(result.metrics)
    return result


def read_predictions(task: Task, path: Path) -> dict[Hashable, str]:
    """Read a results file: a JSON list, or JSON lines, of the task's official result records."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PgmError(f"Cannot read --predictions {path}: {exc.strerror}.", "Check the path.") from None
    stripped = text.lstrip()
    records: list[tuple[int, Any]] = []
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PgmError(f"--predictions {path} line {exc.lineno}: invalid JSON ({exc.msg}).",
                           "Fix the file; it must be a JSON list or one JSON object per line.") from None
        records = [(i + 1, rec) for i, rec in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PgmError(f"--predictions {path} line {lineno}: invalid JSON ({exc.msg}).",
                               "Each line must be one JSON object.") from None
    if not records:
        raise PgmError(f"--predictions {path} holds no predictions.", "Is it the right file?")
    return task.parse_results(records, f"--predictions {path}")


def check_prediction_ids(predictions: dict[Hashable, str], examples: Sequence[Example],
                         source: str) -> list[str]:
    """Unknown ids: all unknown is an error (wrong split or task); some unknown is reported."""
    known = {ex.id for ex in examples}
    unknown = [k for k in predictions if k not in known]
    if unknown and len(unknown) == len(predictions):
        raise PgmError(f"None of the {len(predictions)} ids in {source} is in this split "
                       f"(first: {unknown[0]!r}).", "Check --task and --split.")
    if unknown:
        return [f"{len(unknown)} predictions have ids not in this split (first: {unknown[0]!r}); ignored."]
    return []


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_eval_outputs(out_dir: Path, task: Task, result: EvalResult, *, info: dict[str, Any],
                       submission: Path | None = None) -> list[Path]:
    """predictions.jsonl (official keys + references + score), metrics.json, optional submission."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / "predictions.jsonl"
    with open(pred_path, "w", encoding="utf-8") as fh:
        for row in result.rows:
            fh.write(json.dumps(_json_safe(row)) + "\n")
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(_json_safe({"task": task.name, **info, "metrics": result.metrics,
                                                   "notes": result.notes}), indent=2))
    written = [pred_path, metrics_path]
    if submission is not None:
        records = [{task.id_key: r[task.id_key], task.answer_key: r[task.answer_key]} for r in result.rows]
        Path(submission).write_text(json.dumps(records))
        written.append(Path(submission))
    return written


def run_evaluation(task: Task, data, *, model_cfg=None, adapter: Path | None = None,
                   predictions_file: Path | None = None, max_new_tokens: int | None = None,
                   batch_size: int = 16, always_normalize: bool = False,
                   events: Events | None = None) -> EvalResult:
    """`pgm eval`: score a results file, or generate with the model (+ adapter) and score."""
    from paligemma_cli.data.sources import load_examples, split_for

    split = split_for(task, data, "eval")
    examples = load_examples(task, data, "eval", check_images=predictions_file is None)
    extra = task.load_score_extra(Path(data.data_root), split) if data.data_root is not None else {}
    extra["always_normalize"] = always_normalize
    if predictions_file is not None:
        predictions = read_predictions(task, predictions_file)
        notes = check_prediction_ids(predictions, examples, f"--predictions {predictions_file}")
        result = score(task, predictions, examples, extra)
        result.notes = notes + result.notes
        return result
    from paligemma_cli.engine.model import load_for_inference, load_processor

    processor = load_processor(model_cfg.model_path, model_cfg.revision)
    model = load_for_inference(model_cfg, adapter)
    return evaluate_model(task, model, processor, examples,
                          max_new_tokens=max_new_tokens or task.max_new_tokens,
                          batch_size=batch_size, extra=extra, events=events)
