"""Atomic checkpoints: written to a hidden temp folder, fsynced, then renamed into place.

A crash mid-write leaves only a `.tmp-*` folder, which resume ignores and the next save removes,
so `--resume` always finds a complete checkpoint. A checkpoint holds the adapter, the optimiser
and scheduler states, every RNG state, and the loop position (epoch, micro-batch) so a resumed
run continues bit-for-bit.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoopState:
    """Where the training loop is; saved in every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    total_steps: int = 0
    wandb_run_id: str | None = None
    best_metric: float | None = None
    best_step: int | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def crash_point(hook: str, step: int) -> None:
    """Test hook, inert unless the environment sets `hook` to `step`: SIGKILL this process there.

    The resume tests use PGM_TEST_KILL_AT_STEP (mid-step, before the optimiser update) and
    PGM_TEST_CRASH_DURING_SAVE (after part of the checkpoint's temp folder is written) to crash
    at an exact point and prove the resumed run ends bit-identical to an uninterrupted one.
    """
    if os.environ.get(hook) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def write_errors() -> tuple[type[BaseException], ...]:
    """What a full disk (or a folder gone read-only) raises while saving: OSError from Python's
    writes, SafetensorError from safetensors."""
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def write_error_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    code = re.search(r"os error (\d+)", text)  # safetensors: "I/O error: ... (os error 28)"
    return os.strerror(int(code.group(1))) if code else (text.splitlines() or [type(exc).__name__])[0]


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through memory: torch's zip writer reports a full disk as a bare RuntimeError
    ("unexpected pos ..."), a plain file write as OSError(ENOSPC)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getbuffer())


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(output_dir: Path, model, optimizer, scheduler, state: LoopState,
                    *, keep: int, rng: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `step-<global_step>` atomically, then keep only the newest `keep`."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step-{state.global_step:08d}"
    tmp = root / f".tmp-step-{state.global_step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a crash mid-write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp)
        crash_point("PGM_TEST_CRASH_DURING_SAVE", state.global_step)
        _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save(scheduler.state_dict(), tmp / "scheduler.pt")
        _torch_save(rng if rng is not None else rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except write_errors() as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir)
        kept = f" The previous checkpoint {previous} is intact." if previous else ""
        raise PgmError(f"Saving checkpoint step {state.global_step} failed: {write_error_reason(exc)}.{kept}",
                       "Free disk space (or choose another --output-dir), then rerun with --resume.") from None
    prune_checkpoints(output_dir, keep)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders are not checkpoints)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[LoopState, dict[str, Any]]:
    """Restore adapter, optimiser and scheduler from `path`; return the loop state and RNG state."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = LoopState(**json.loads((path / STATE_FILE).read_text()))
    rng = torch.load(path / "rng.pt", weights_only=False)
    return state, rng
