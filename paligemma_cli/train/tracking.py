"""What a run records as it goes: train_log.jsonl, the logging window's figures, and Weights & Biases.

wandb reads its key from the environment or its own netrc; pgm never reads, prints or writes it.
`WANDB_MODE=offline` logs to ./wandb for a later `wandb sync`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError

LOG_FILE = "train_log.jsonl"


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
    started: float = field(default_factory=time.time)

    def add_batch(self, loss: float, samples: int, tokens: int, padded: int) -> None:
        self.loss += loss
        self.samples += samples
        self.tokens += tokens
        self.padded += padded

    def record(self, step: int, epoch: int, loss: float, lr: float) -> dict[str, Any]:
        """The log line for this window (`loss` as reduced over the processes)."""
        elapsed = max(time.time() - self.started, 1e-9)
        return {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "samples_per_s": self.samples / elapsed,
                "padded_fraction": self.padded / max(self.tokens, 1), "padded_tokens": self.padded}


class Tracker:
    def __init__(self, enabled: bool, project: str, config: dict[str, Any], output_dir: Path,
                 run_id: str | None = None):
        self.run = None
        self.run_id = run_id
        if not enabled:
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            raise PgmError("--use-wandb needs the wandb package.", "pip install 'paligemma-cli[wandb]'.") from None
        try:
            self.run = wandb.init(project=project, config=config, id=run_id, resume="allow",
                                  dir=str(output_dir), name=Path(output_dir).name)
        except Exception as exc:  # login/network problems: say how to fix, never echo the key
            raise PgmError(f"W&B could not start ({type(exc).__name__}).",
                           "Run `wandb login`, or set WANDB_MODE=offline to log locally.") from None
        self.run_id = self.run.id

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
