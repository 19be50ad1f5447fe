"""Where a run logs besides train_log.jsonl (--report-to): W&B and TensorBoard behind one interface.

The loop calls `log(values, step)` once per log line or evaluation, `flush()` after each
checkpoint (so everything up to a checkpoint's step is on disk when the checkpoint is) and
`finish()` at the end. Keys are `train/<field>` for the fields of a train_log.jsonl line and
`eval/<metric>` for an evaluation.

wandb reads its key from the environment or its own netrc; pgm never reads, prints or writes it.
`WANDB_MODE=offline` logs to OUTPUT_DIR/wandb for a later `wandb sync`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
PACKAGES = {"wandb": ("wandb", "pip install 'paligemma-cli[wandb]'"),
            "tensorboard": ("tensorboard", "pip install 'paligemma-cli[tensorboard]'")}


def check_packages(names: tuple[str, ...]) -> None:
    """Each tracker's package is installed (checked before any model loads, importing nothing)."""
    for name in names:
        module, pip = PACKAGES[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules without a spec: a stand-in, treated as absent
            found = False
        if not found:
            raise PgmError(f"--report-to {name} needs the {module} package, which is not installed.",
                           f"Install it: {pip}")


class Tracker:
    """One place a run's scalars go. The base class logs nothing."""

    def log(self, values: dict[str, float], step: int) -> None:
        """Record `values` (name -> number) at optimiser step `step`."""

    def flush(self) -> None:
        """Write out what is buffered."""

    def finish(self) -> None:
        """Flush and close; later calls do nothing."""


class WandbTracker(Tracker):
    def __init__(self, project: str, config: dict[str, Any], output_dir: Path, run_id: str | None):
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            raise PgmError("--report-to wandb needs the wandb package.", PACKAGES["wandb"][1]) from None
        try:
            self.run = wandb.init(project=project, config=config, id=run_id, resume="allow",
                                  dir=str(output_dir), name=Path(output_dir).name)
        except Exception as exc:  # login/network problems: say how to fix, never echo the key
            raise PgmError(f"W&B could not start ({type(exc).__name__}).",
                           "Run `wandb login`, or set WANDB_MODE=offline to log locally.") from None
        self.run_id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TensorBoardTracker(Tracker):
    """Event files in OUTPUT_DIR/tensorboard/, written by torch's SummaryWriter.

    A resumed run opens a new event file with `purge_step` = the checkpoint's step + 1: TensorBoard
    then hides the points the interrupted run logged after that checkpoint, which the resumed run
    logs again, so each step shows once (as train_log.jsonl, which `truncate_log` cuts there).
    """

    def __init__(self, output_dir: Path, config: dict[str, Any], start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(output_dir) / TENSORBOARD_DIR),
                                    purge_step=start_step + 1 if start_step else None)
        if not start_step:
            import json

            self.writer.add_text("run_config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Trackers(Tracker):
    """All the run's trackers as one: what the loop holds."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @property
    def wandb_run_id(self) -> str | None:
        return next((t.run_id for t in self.trackers if isinstance(t, WandbTracker)), None)

    def log(self, values: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(values, step)

    def flush(self) -> None:
        for t in self.trackers:
            t.flush()

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def open_trackers(names: tuple[str, ...], *, project: str, config: dict[str, Any], output_dir: Path,
                  wandb_run_id: str | None, start_step: int) -> Trackers:
    """Start the trackers `names` (some of wandb, tensorboard); a resumed run continues its W&B
    run `wandb_run_id` and its TensorBoard curves from `start_step`."""
    trackers: list[Tracker] = []
    try:
        if "tensorboard" in names:
            trackers.append(TensorBoardTracker(output_dir, config, start_step))
        if "wandb" in names:
            trackers.append(WandbTracker(project, config, output_dir, wandb_run_id))
    except BaseException:
        Trackers(trackers).finish()
        raise
    return Trackers(trackers)


def scalars(prefix: str, record: dict[str, Any], skip: tuple[str, ...] = ("step",)) -> dict[str, float]:
    """The numbers of a log record as tracker values named `prefix/<field>`."""
    return {f"{prefix}/{k}": v for k, v in record.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
