"""`pgm predict`: flags -> infer.predict (eval's loading and generation) -> table, JSON or a file."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from paligemma_cli.cli._options import command_with, field_parameter
from paligemma_cli.cli._ui import console, err_console, quiet_libraries
from paligemma_cli.config import ModelConfig

TABLE_ROWS = 20  # with --output, more results than this are only written, not shown

HELP = """Ask a model (+ LoRA adapter) about your own images: the loading and batched greedy generation of pgm eval.

Give IMAGE paths with one --prompt, or --input FILE.jsonl with one {"image": ..., "prefix": ...} per line (images relative to the file; a line without "prefix" gets --prompt). A few answers show as a table; --json prints one JSON line per image for scripts; --output writes the same lines to a file.

--task picks the default prompt (coco "caption en", the VQA tasks "answer en what is this?") and --max-new-tokens (vqav2/gqa 16, docvqa 32, coco 48); without it the prompt is "caption en" and 64 tokens. <locNNNN> and <segNNN> tokens (PaliGemma's detection and segmentation output) are kept unless --strip-special; for a "detect ..." or "segment ..." prompt the boxes are also given in pixels of the original image.

Examples:

  pgm predict --adapter runs/vqav2 cat.jpg dog.jpg --prompt "answer en what animal is this?"

  pgm predict --model-path google/paligemma-3b-mix-448 street.jpg --prompt "detect car ; person"

  pgm predict --adapter runs/coco --task coco --input photos.jsonl --output captions.jsonl
"""


def _params():
    return [field_parameter(f, "Model") for f in fields(ModelConfig) if f.name != "gradient_checkpointing"]


@command_with(_params())
def predict_command(
    images: Optional[list[Path]] = typer.Argument(None, metavar="IMAGE...", show_default=False,
                                                  help="Image files to ask about."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder (a pgm train output "
                                           "dir, checkpoint or best/); --model-path then defaults to its base.",
                                           rich_help_panel="Model"),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The prompt, as PaliGemma takes it "
                                         "(e.g. \"answer en what is this?\", \"caption en\", \"detect cat\")."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="coco, docvqa, gqa or vqav2: the default "
                                       "prompt and --max-new-tokens of that task."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help="JSON lines of {\"image\": path, "
                                              "\"prefix\": prompt}; other keys are copied to the output."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the answers as JSON lines here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if pgm wrote it (a file of "
                                   "yours is never replaced)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per generation batch."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                 help="Tokens to generate; default per --task, else 64."),
    strip_special_tokens: bool = typer.Option(False, "--strip-special", help="Drop <locNNNN>/<segNNN> "
                                              "tokens from the answers."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per line for scripts."),
    **values,
) -> None:
    from paligemma_cli.config import build_run
    from paligemma_cli.infer import predict as engine
    from paligemma_cli.errors import PgmError
    from paligemma_cli.tasks import get_task

    if bool(images) == (input_file is not None):
        raise PgmError("Give IMAGE paths or --input FILE.jsonl, not both." if images else
                       "Nothing to predict: give IMAGE paths or --input FILE.jsonl.",
                       'Example: pgm predict --model-path M cat.jpg --prompt "caption en"')
    t = get_task(task) if task else None
    default_prompt = prompt or (t.prefix("what is this?") if t else engine.DEFAULT_PROMPT)
    max_new_tokens = max_new_tokens or (t.max_new_tokens if t else engine.DEFAULT_MAX_NEW_TOKENS)
    if output is not None:  # before any image or model loads
        from paligemma_cli.outputs import check_file

        for note in check_file(output, overwrite=overwrite, flag="--output"):
            err_console.print(note, style="yellow", markup=False, highlight=False)
    examples = (engine.read_input_file(input_file, default_prompt) if input_file is not None
                else engine.examples_from_images(images, default_prompt))
    if adapter is not None and values.get("model_path") is None:
        from paligemma_cli.model.load import adapter_base_model

        values["model_path"] = adapter_base_model(adapter)  # the base it was trained on
    model_cfg = build_run(values).model
    quiet_libraries()
    from paligemma_cli.cli.progress import RichEvents

    from paligemma_cli.outputs import claim_file

    events = RichEvents() if len(examples) > batch_size and not as_json else None  # a bar for many
    with (claim_file(output, "predict", overwrite=overwrite, flag="--output") if output else nullcontext()) as target:
        for note in target.notes if target else []:
            err_console.print(note, style="yellow", markup=False, highlight=False)
        try:
            predictions = engine.predict(model_cfg, examples, adapter=adapter, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, keep_special=not strip_special_tokens,
                                         events=events)
        finally:
            if events:
                events.close()
        if target:
            engine.write_predictions(target, predictions)
    if as_json:
        for p in predictions:
            typer.echo(json.dumps(p.record()))
    elif output is None or len(predictions) <= TABLE_ROWS:
        _table(predictions)
    if output is not None and not as_json:
        n = len(predictions)
        console.print(f"Wrote {n} answer{'' if n == 1 else 's'} to {output}", highlight=False, soft_wrap=True,
                      markup=False)


def _box(b) -> str:
    return f"{escape(b.label) or '?'} ({b.x_min:g}, {b.y_min:g}, {b.x_max:g}, {b.y_max:g})"


def _table(predictions) -> None:
    table = Table(title_justify="left", show_lines=len(predictions) > 1)
    for column in ("image", "prompt", "answer"):
        table.add_column(column, overflow="fold")
    with_boxes = any(p.boxes is not None for p in predictions)
    if with_boxes:
        table.add_column("boxes, px (x_min, y_min, x_max, y_max)", overflow="fold")
    for p in predictions:
        row = [escape(p.image), escape(p.prompt), escape(p.answer)]
        if with_boxes:
            row.append("\n".join(_box(b) for b in p.boxes or []) or "-")
        table.add_row(*row)
    console.print(table, highlight=False)
