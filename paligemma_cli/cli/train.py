"""`pgm train TASK`: flags -> TrainRun -> train.loop -> summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from paligemma_cli.cli._options import command_with, parameters_for
from paligemma_cli.cli._ui import console, quiet_libraries
from paligemma_cli.config import DataConfig, EvalConfig, LoraConfig, ModelConfig, TrainConfig, build_run

HELP = """Fine-tune PaliGemma on TASK (coco, docvqa, gqa, vqav2) with QLoRA.

Defaults are the QLoRA recipe: 4-bit NF4 base with double quantisation and bf16 compute, LoRA r16/alpha 32 on the language model's q/k/v/o/gate/up/down projections, gradient checkpointing. The output dir gets a plain PEFT adapter (+ processor, run_config.json, loss.png) and checkpoints.

Examples:

  pgm train vqav2 --data-root /data/vqav2 --output-dir runs/vqav2

  pgm train docvqa --hf-dataset lmms-lab/DocVQA --max-length 256 --eval-steps 500

  pgm train coco --data-root /data/coco --report-to tensorboard --push-to-hub me/paligemma-coco

  pgm data synth vqav2 demo/data && pgm train vqav2 --model-path tiny --data-root demo/data
"""

PARAMS = parameters_for(DataConfig, ModelConfig, LoraConfig, TrainConfig, EvalConfig)


@command_with(PARAMS)
def train(config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file of settings (keys are flag names); flags given here override it.",
        rich_help_panel="Run"), **values) -> None:
    from paligemma_cli.tasks import get_task

    get_task(values["task"])  # an unknown task fails first, listing the supported ones
    run = build_run(values, config)
    quiet_libraries()
    from paligemma_cli.cli.progress import RichEvents
    from paligemma_cli.train.loop import train as run_training

    events = RichEvents()
    try:
        result = run_training(run, events)
    finally:
        events.close()
    if not result.main_process:  # under `accelerate launch` the main process reports for all
        if result.interrupted:
            raise typer.Exit(130)
        return
    table = Table(title="pgm train", show_header=False, title_justify="left")
    table.add_row("task", run.data.task)
    table.add_row("steps", f"{result.global_step} / {result.total_steps}")
    table.add_row("final loss", f"{result.final_loss:.4f}" if result.final_loss is not None else "-")
    table.add_row("time", f"{result.seconds:.1f} s")
    if result.best:
        table.add_row("best", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in result.best.items()))
    if result.truncated_examples:
        table.add_row("truncated", f"{result.truncated_examples} examples hit --max-length")
    table.add_row("output", escape(str(result.output_dir)))
    if result.hub_url:  # the commit's URL was printed when it was made
        table.add_row("hub", escape(f"https://huggingface.co/{run.train.push_to_hub}"))
    console.print(table)
    if result.interrupted:
        console.print(f"[yellow]Stopped at step {result.global_step}; checkpoint saved.[/] Resume with the "
                      f"same command plus --resume.", highlight=False)
        raise typer.Exit(130)
