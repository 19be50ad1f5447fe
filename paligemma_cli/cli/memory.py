"""`pgm memory-estimate`: predicted peak GPU memory of a training setup, what fits, measured peak."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from paligemma_cli.cli._options import command_with, parameters_for
from paligemma_cli.cli._ui import console, quiet_libraries
from paligemma_cli.config import (DEFAULT_MODEL, OPTIMIZERS, DataConfig, LoraConfig, ModelConfig,
                                  TrainConfig, build_run)
from paligemma_cli.errors import PgmError

HELP = ("Predict peak GPU memory of QLoRA training: weights (NF4 constants counted exactly), LoRA, "
        "gradients, optimizer states, activations, CUDA overhead. `--gpu-memory 24GB` says which "
        "batch size / accumulation fits; `--measure` runs real steps on this device.")
DEFAULT_TEXT_TOKENS = 64  # max_length when no task default applies (vqav2, gqa, coco)
_KEEP = {"model_path", "revision", "quantization", "compute_dtype", "gradient_checkpointing",
         "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "batch_size",
         "gradient_accumulation_steps", "optimizer", "max_length"}
_EXCLUDE = tuple(f.name for cls in (ModelConfig, LoraConfig, DataConfig, TrainConfig)
                 for f in dataclasses.fields(cls) if f.name not in _KEEP)


@command_with(parameters_for(ModelConfig, LoraConfig, DataConfig, TrainConfig, exclude=_EXCLUDE))
def memory_estimate(
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", metavar="SIZE", help=(
        "Memory of the target GPU (e.g. 24GB, 80GiB): print the largest --batch-size that fits "
        "and the --gradient-accumulation-steps keeping the effective batch.")),
    resolution: Optional[int] = typer.Option(None, "--resolution", help=(
        "Image size to assume instead of the checkpoint's (224, 448, 896): image tokens = "
        "(resolution / 14)^2.")),
    answer_tokens: Optional[int] = typer.Option(None, "--answer-tokens", min=1, metavar="K", help=(
        "Positions the loss takes logits for: tokens in the longest answer of a batch (its EOS "
        "counted) + 1; at most --max-length. Default --max-length, the most the collator lets an "
        "answer take, so the estimate never counts too few: a known bound (e.g. 17 for answers of "
        "at most 15 tokens + EOS) only lowers it where the logits, not the layers, set the peak.")),
    measure: bool = typer.Option(False, "--measure", help=(
        "Also run a few real training steps with a synthetic batch on this device and print the "
        "measured peak beside the estimate (CUDA: max allocated; CPU: profiler allocation peak).")),
    steps: int = typer.Option(3, "--steps", min=2, help="Training steps for --measure."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    **flags,
) -> None:
    from paligemma_cli.diagnose import memory

    values = {k: v for k, v in flags.items() if v is not None}
    if values.get("optimizer") and values["optimizer"] not in OPTIMIZERS:
        raise PgmError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}.")
    run = build_run(values)  # validates every flag the same way `pgm train` does
    model_path = run.model.model_path or DEFAULT_MODEL
    config = memory.load_config(model_path)
    setup = memory.TrainSetup(
        batch_size=run.train.batch_size,
        max_length=run.data.max_length or DEFAULT_TEXT_TOKENS,
        quantization=run.model.quantization,
        compute_dtype="bf16" if run.model.compute_dtype == "auto" else run.model.compute_dtype,
        lora_rank=run.lora.lora_rank, lora_targets=run.lora.target_parts(),
        gradient_checkpointing=run.model.gradient_checkpointing,
        optimizer=run.train.optimizer, resolution=resolution, answer_tokens=answer_tokens)
    est = memory.estimate(config, setup)
    out: dict = {"model_path": model_path, "estimate": est.to_dict()}
    plan = None
    if gpu_memory:
        capacity = memory.parse_size(gpu_memory)
        plan = memory.fit(config, setup, capacity,
                          effective_batch=run.train.batch_size * run.train.gradient_accumulation_steps)
        out["fit"] = {"gpu_memory": capacity, "fits": plan.fits, "flags": plan.flags() if plan.fits else None,
                      "batch_size": plan.batch_size,
                      "gradient_accumulation_steps": plan.gradient_accumulation_steps,
                      "total": plan.estimate.total, "reason": plan.reason}
    measured = None
    if measure:
        quiet_libraries()
        measured = _measure(run, setup, steps, as_json)
        same = memory.estimate(config, dataclasses.replace(  # the batch the steps really ran
            setup, max_length=measured.seq_len - est.image_tokens, answer_tokens=measured.answer_positions))
        out["measured"] = {**dataclasses.asdict(measured), "estimate_allocated": same.total - same.overhead,
                           "estimate_weights": same.weights}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    _print_estimate(model_path, est)
    if plan is not None:
        _print_plan(plan, memory.parse_size(gpu_memory))
    if measured is not None:
        _print_measured(measured, out["measured"])


def _gib(n: float) -> str:
    """GiB for model-sized numbers, MiB / KiB for the tiny model's."""
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2)):
        if n >= 0.1 * scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n / 1024:,.1f} KiB"


def _print_estimate(model_path: str, est) -> None:
    s = est.setup
    table = Table(title=f"{escape(str(model_path))}: {est.params / 1e9:.2f}B params, {s.quantization}, "
                        f"LoRA r{s.lora_rank} on {'+'.join(s.lora_targets)}, {s.optimizer}",
                  title_justify="left", header_style="bold")
    table.add_column("Part")
    table.add_column("Memory", justify="right", no_wrap=True)
    table.add_column("Bytes", justify="right", no_wrap=True)
    table.add_column("How", overflow="fold")
    for name, value, note in est.rows():
        table.add_row(name, _gib(value), f"{value:,}", note)
    table.add_section()
    table.add_row("[bold]total (peak)[/]", f"[bold]{_gib(est.total)}[/]", f"{est.total:,}", "")
    console.print(table, highlight=False)


def _print_plan(plan, capacity: int) -> None:
    if plan.fits:
        console.print(f"[green]Fits in {_gib(capacity)}:[/] {escape(plan.flags())} "
                      f"(estimated peak {_gib(plan.estimate.total)}).", highlight=False)
    else:
        console.print(f"[red]Does not fit in {_gib(capacity)}.[/] {escape(plan.reason)}", highlight=False)


def _measure(run, setup, steps: int, as_json: bool):
    def progress(i: int) -> None:
        if not as_json:
            console.print(f"[dim]measured step {i}/{steps}[/]", highlight=False)

    from paligemma_cli.diagnose.measure import measure

    return measure(run.model, run.lora, setup, steps=steps, on_step=progress)


def _print_measured(m, info: dict) -> None:
    table = Table(title=f"Measured on {m.device} ({m.seq_len} tokens per example, logits for the last "
                        f"{m.answer_positions})", title_justify="left",
                  header_style="bold")
    table.add_column("")
    table.add_column("Estimate", justify="right")
    table.add_column("Measured", justify="right")
    table.add_row("weights (storage)", f"{info['estimate_weights']:,}", f"{m.weights:,}")
    peak = "unavailable" if m.peak is None else _gib(m.peak)
    table.add_row("peak allocated", _gib(info["estimate_allocated"]), peak)
    if m.reserved is not None:
        table.add_row("peak reserved", "", _gib(m.reserved))
    console.print(table, highlight=False)
    if m.device != "cuda":
        console.print(f"[yellow]No GPU here: the GPU peak is unavailable;[/] {m.method}.", highlight=False)
