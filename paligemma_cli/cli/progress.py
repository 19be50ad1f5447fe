"""Rich implementations of the engine's Events: live bars on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from paligemma_cli.cli._ui import console
from paligemma_cli.events import Events


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, int):
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class RichEvents(Events):
    def __init__(self):
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, disable=not self.live, transient=False)
        self.train_task = None
        self.eval_task = None
        self.phase: tuple[str, float, Any] | None = None  # description, start time, progress task

    def message(self, text: str, level: str = "info") -> None:
        console.print(Text(text, style="yellow" if level == "warning" else "dim"), highlight=False)

    def phase_start(self, description: str, total: int | None = None) -> None:
        # A live bar on a terminal (a pulsing one when the total is unknown), a line in a log, so a
        # long start-up is never silent; the end line carries the time either way.
        task = None
        if self.live:
            self.progress.start()
            task = self.progress.add_task(escape(description), total=total, stats="")
        else:
            console.print(Text(f"{description} ...", style="dim"), highlight=False)
        self.phase = (description, time.perf_counter(), task)

    def phase_advance(self, count: int) -> None:
        if self.phase and self.phase[2] is not None:
            self.progress.advance(self.phase[2], count)

    def phase_end(self, summary: str) -> None:
        if not self.phase:
            return
        description, start, task = self.phase
        if task is not None:
            self.progress.remove_task(task)
        console.print(Text(f"{description}: {summary} ({time.perf_counter() - start:.1f} s)", style="dim"),
                      highlight=False)
        self.phase = None

    def train_start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None:
        console.print(f"Training {info['task']} on {info['device']}: {total_steps} steps, effective batch "
                      f"{info['effective_batch']}, {info['trainable_params']:,} trainable of "
                      f"{info['total_params']:,} parameters.", highlight=False, markup=False)
        self.progress.start()
        self.train_task = self.progress.add_task("train", total=total_steps, completed=start_step, stats="")

    def train_step(self, step: int, metrics: dict[str, Any]) -> None:
        if metrics:
            stats = f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  {metrics['samples_per_s']:.1f} samples/s"
            self.progress.update(self.train_task, completed=step, stats=stats)
            if not self.live:
                console.print(f"step {step}  {stats}", highlight=False)
        else:
            self.progress.update(self.train_task, completed=step)

    def checkpoint_saved(self, path: str, step: int) -> None:
        if not self.live:
            console.print(Text(f"checkpoint {path}", style="dim"), highlight=False)

    def eval_start(self, total: int, description: str) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.eval_task = self.progress.add_task(escape(description), total=total, stats="")

    def eval_advance(self, count: int) -> None:
        self.progress.advance(self.eval_task, count)

    def eval_end(self, metrics: dict[str, Any]) -> None:
        self.progress.remove_task(self.eval_task)
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        console.print(Text.assemble(("eval", "cyan"), " ", _fmt(shown)), highlight=False)

    def close(self) -> None:
        self.progress.stop()
