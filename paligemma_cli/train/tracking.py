"""What a run records as it goes: train_log.jsonl and the logging window's figures.

W&B and TensorBoard (--report-to) get the same figures through train/trackers.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paligemma_cli.outputs import TRAIN_LOG as LOG_FILE  # noqa: F401  (re-exported: the name the loop uses)


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def log_up_to(path: Path, step: int) -> str:
    """The log's lines up to `step`: later ones were written after the checkpoint a resume starts
    from and will be logged again (a line torn by a crash is dropped too)."""
    if not path.exists():
        return ""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    return "".join(kept)


@dataclass
class Window:
    """Loss, throughput and padding summed over the optimiser steps since the last log line."""

    loss: float = 0.0
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    padded: int = 0
    grad_norm: float | None = None  # of the window's last optimiser step, before clipping
    started: float = field(default_factory=time.time)

    def add_batch(self, loss: float, samples: int, tokens: int, padded: int) -> None:
        self.loss += loss
        self.samples += samples
        self.tokens += tokens
        self.padded += padded

    def record(self, step: int, epoch: int, loss: float, lr: float) -> dict[str, Any]:
        """The log line for this window (`loss` as reduced over the processes)."""
        elapsed = max(time.time() - self.started, 1e-9)
        record = {"step": step, "epoch": epoch, "loss": loss, "lr": lr}
        if self.grad_norm is not None:  # absent with --max-grad-norm 0 (nothing computes it)
            record["grad_norm"] = self.grad_norm
        return {**record, "samples_per_s": self.samples / elapsed,
                "padded_fraction": self.padded / max(self.tokens, 1), "padded_tokens": self.padded}
