"""Weights & Biases, only when asked: config, loss, lr and eval metrics; resumable by run id.

wandb reads its key from the environment or its own netrc; pgm never reads, prints or writes it.
`WANDB_MODE=offline` logs to ./wandb for a later `wandb sync`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError


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
