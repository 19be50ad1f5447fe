"""`pgm eval`: generate with a model (+ adapter) or read a results file; score; write the files."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from paligemma_cli.cli._options import command_with, field_parameter
from paligemma_cli.cli._ui import console, quiet_libraries
from paligemma_cli.config import DataConfig, ModelConfig

BREAKDOWN_ROWS = 12  # a breakdown with more types (VQAv2 has 65 question types) is one table row

HELP = """Evaluate on TASK's eval split with the official metric (VQA accuracy, ANLS, GQA, COCO captions).

With --model-path (and --adapter; --model-path then defaults to the base the adapter was trained on) it generates greedily in batches; with --predictions it scores an existing results file in the official format. Either way it writes predictions.jsonl (official keys + references + per-example score) and metrics.json to --output-dir.

Examples:

  pgm eval --task vqav2 --model-path google/paligemma-3b-pt-448 --adapter runs/vqav2 --data-root /data/vqav2

  pgm eval --task gqa --predictions results.json --data-root /data/gqa --split testdev

  pgm eval --task vqav2=/data/vqav2 --task gqa=/data/gqa --model-path merged/ -o outputs/merged
"""


def _params():
    model = [field_parameter(f, "Model") for f in fields(ModelConfig) if f.name != "gradient_checkpointing"]
    data = [field_parameter(f, "Data") for f in fields(DataConfig)
            if f.name in ("data_root", "hf_dataset", "eval_file", "max_eval_samples", "prompt",
                         "dataloader_workers")]
    return model + data


@command_with(_params())
def eval_command(
    task: List[str] = typer.Option(..., "--task", "-t", help="coco, docvqa, gqa or vqav2 (with --data-root or "
                                   "another source); or TASK=DATA_ROOT, repeatable: one model load, each task "
                                   "in OUTPUT_DIR/TASK/ and a summary table."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate; default per task "
                                        "(vqav2 val2014, gqa testdev, docvqa val, coco val2017).",
                                        rich_help_panel="Data"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder (a pgm train "
                                           "output dir, checkpoint or best/).", rich_help_panel="Model"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score this results file "
                                               "(JSON list or JSON lines, official format) instead of "
                                               "running a model.", rich_help_panel="Data"),
    output_dir: Path = typer.Option(Path("outputs/eval"), "--output-dir", "-o",
                                    help="Where predictions.jsonl and metrics.json go."),
    submission: Optional[Path] = typer.Option(None, "--submission", help="Also write the predictions "
                                              "in the eval server's official format to this file."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Examples per generation batch."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Tokens to "
                                                 "generate; default per task (vqa/gqa 16, docvqa 32, coco 48)."),
    vqa_server_normalization: bool = typer.Option(False, "--vqa-server-normalization", help="VQAv2: "
                                                  "normalise the prediction even when all annotators "
                                                  "agree (EvalAI server variant; default is the "
                                                  "official vqaEval.py)."),
    anls_variant: Literal["rrc", "paper"] = typer.Option("rrc", "--anls-variant", help="DocVQA: rrc is what "
                                                         "the RRC / docvqa.org evaluation server computes; paper "
                                                         "is Biten et al.'s definition, reported as anls_paper."),
    breakdown: bool = typer.Option(False, "--breakdown", help="Show every row of every per-type breakdown "
                                   f"(by default one with over {BREAKDOWN_ROWS} types is one summary row; "
                                   "metrics.json always has them all)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier pgm evaluation in "
                                   "--output-dir (and a --submission file pgm wrote)."),
    **values,
) -> None:
    from paligemma_cli.errors import PgmError

    tasks = _task_roots(task, values.get("data_root"))
    if predictions is not None and adapter is not None:
        raise PgmError("--predictions and --adapter exclude each other.",
                       "Score a file (--predictions) or run a model (--model-path/--adapter), not both.")
    if len(tasks) > 1 and (predictions is not None or submission is not None):
        raise PgmError(f"--{'predictions' if predictions is not None else 'submission'} is for one --task.",
                       "Score or write one results file per pgm eval.")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():  # before a model loads
        raise PgmError(f"--adapter {adapter} has no adapter_config.json.",
                       "Point it at a pgm train output dir, a checkpoint or best/.")
    if adapter is not None and values.get("model_path") is None:
        from paligemma_cli.model.load import adapter_base_model

        values["model_path"] = adapter_base_model(adapter)  # the base it was trained on
    options = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, always_normalize=vqa_server_normalization,
                   anls_variant=anls_variant)
    if len(tasks) > 1:
        return _eval_many(tasks, values, split, adapter, output_dir, overwrite, options)
    (t, root), = tasks
    if root is not None:
        values["data_root"] = root
    _eval_one(t, values, split, adapter, predictions, output_dir, submission, overwrite, options, breakdown)


def _task_roots(values: list[str], data_root: Path | None) -> list[tuple[object, Path | None]]:
    """--task values -> [(Task, its data root or None)]: one plain TASK, or TASK=DATA_ROOT each."""
    from paligemma_cli.errors import PgmError
    from paligemma_cli.tasks import get_task

    pairs = [(v.partition("=")[0], Path(v.partition("=")[2]) if "=" in v else None) for v in values]
    if len(pairs) > 1 and any(root is None for _, root in pairs):
        plain = next(name for name, root in pairs if root is None)
        raise PgmError(f"--task {plain} is given with other --task values.",
                       "To evaluate several tasks in one run, give each as --task TASK=DATA_ROOT.")
    if any(root is not None for _, root in pairs) and data_root is not None:
        raise PgmError("--data-root and --task TASK=DATA_ROOT both name a data root.", "Give one of them.")
    tasks = [(get_task(name), root) for name, root in pairs]
    names = [t.name for t, _ in tasks]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise PgmError(f"--task {twice} is given twice.", "Give each task once.")
    for t, root in tasks:
        if root is not None and not root.is_dir():
            raise PgmError(f"--task {t.name}={root}: {root} does not exist.",
                           f"Point it at the {t.name} data root (`pgm data layout {t.name}` shows what it holds).")
    return tasks


def _eval_one(t, values, split, adapter, predictions, output_dir, submission, overwrite, options, breakdown) -> None:
    from paligemma_cli.config import build_run
    from paligemma_cli.errors import PgmError
    from paligemma_cli.outputs import check_file, check_output, claim_file, claim_output

    run = build_run({**values, "task": t.name, "eval_split": split})
    notes = check_output(output_dir, "eval", overwrite=overwrite)  # before any data or model loads
    inside = submission is not None and submission.absolute().parent == output_dir.absolute()
    if submission is not None and not inside and output_dir.absolute() in submission.absolute().parents:
        raise PgmError(f"--submission {submission} is in a folder inside --output-dir {output_dir}.",
                       "Put it directly in --output-dir, or outside it.")
    if submission is not None and not inside:
        notes += check_file(submission, overwrite=overwrite, flag="--submission")
    if predictions is None:  # scoring a file loads no model: keep transformers' 1.5 s import out of it
        quiet_libraries()
    from paligemma_cli.cli.progress import RichEvents
    from paligemma_cli.infer.evaluate import evaluated, run_evaluation, submission_bytes, write_eval_outputs

    events = RichEvents()
    with claim_output(output_dir, "eval", overwrite=overwrite) as out, \
            (claim_file(submission, "eval", overwrite=overwrite, flag="--submission")
             if submission is not None and not inside else nullcontext()) as sub:
        try:
            for note in notes + out.notes + (sub.notes if sub else []):
                events.message(note, "warning")
            result = run_evaluation(t, run.data, model_cfg=run.model, adapter=adapter, predictions_file=predictions,
                                    events=events, **options)
        finally:
            events.close()
        info = evaluated(t, run.data, model_cfg=run.model, adapter=adapter, predictions_file=predictions,
                         max_new_tokens=options["max_new_tokens"])
        written = write_eval_outputs(out, t, result, info=info)
        if submission is not None:
            data = submission_bytes(t, result)
            written.append(sub.write(data) if sub else out.write(submission.name, data))
    # a metric that could not be computed gets one line saying why and how to enable it, not a table row
    show_metrics(t.title, {k: v for k, v in result.metrics.items() if k not in result.unavailable},
                 breakdown=breakdown)
    _show_notes(result)
    console.print(Text(f"Wrote {', '.join(str(p) for p in written)}"), highlight=False, soft_wrap=True)


def _eval_many(tasks, values, split, adapter, output_dir, overwrite, options) -> None:
    """Several TASK=DATA_ROOT: one model load, OUTPUT_DIR/TASK/{predictions.jsonl,metrics.json}, a summary."""
    from paligemma_cli.config import build_run
    from paligemma_cli.outputs import check_output, claim_output

    runs = [(t, build_run({**values, "task": t.name, "data_root": root, "eval_split": split})) for t, root in tasks]
    notes = check_output(output_dir, "eval", overwrite=overwrite)
    quiet_libraries()
    from paligemma_cli.cli.progress import RichEvents
    from paligemma_cli.infer.evaluate import evaluate_tasks, evaluated, write_eval_outputs

    events = RichEvents()
    with claim_output(output_dir, "eval", overwrite=overwrite) as out:
        try:
            for note in notes + out.notes:
                events.message(note, "warning")
            results = evaluate_tasks([(t, run.data) for t, run in runs], model_cfg=runs[0][1].model, adapter=adapter,
                                     events=events, **options)
        finally:
            events.close()
        for (t, run), result in zip(runs, results):
            with out.staged(t.name) as folder:
                folder.mkdir()
                write_eval_outputs(out, t, result, folder=folder, info=evaluated(
                    t, run.data, model_cfg=run.model, adapter=adapter, max_new_tokens=options["max_new_tokens"]))
    table = Table(title="pgm eval (0-100, the scale papers use)", title_justify="left")
    for column in ("task", "metric", "score", "examples"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for (t, _), result in zip(runs, results):
        score = t.headline_0_100(result.metrics)
        table.add_row(t.name, t.headline, "unavailable" if score is None else f"{score:.2f}", str(result.examples))
    console.print(table)
    for result in results:
        _show_notes(result)
    console.print(Text(f"Wrote {', '.join(str(output_dir / t.name) for t, _ in runs)}"), highlight=False,
                  soft_wrap=True)


def _show_notes(result) -> None:
    # Names, notes and paths carry user text (ids, answers, keys, paths): printed verbatim, never as markup.
    for name, why in result.unavailable.items():
        console.print(f"[yellow]{escape(name)} skipped:[/] {escape(why)}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def show_metrics(title: str, metrics: dict, *, breakdown: bool = False) -> None:
    """One row per metric, nested per-type dicts as `metric/type` rows; None shows as unavailable.

    A breakdown of more than BREAKDOWN_ROWS types is one summary row unless `breakdown`. Metric
    and type names come from the data (question types, answer types) and are shown verbatim.
    """
    table = Table(title=Text(title), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def add(name: str, value) -> None:
        if value is None:
            table.add_row(Text(name), Text("unavailable", style="yellow"))
        elif isinstance(value, (bool, int)):
            table.add_row(Text(name), Text(str(value)))
        elif isinstance(value, float):
            table.add_row(Text(name), Text(f"{value:.4f}"))

    for key, value in metrics.items():
        if isinstance(value, dict) and len(value) > BREAKDOWN_ROWS and not breakdown:
            table.add_row(Text(key), Text(f"{len(value)} types (--breakdown)", style="dim"))
        elif isinstance(value, dict):
            for sub, v in value.items():
                add(f"{key}/{sub}", v)
        else:
            add(key, value)
    if not metrics:
        table.add_row("(not scored)", "")
    console.print(table)
