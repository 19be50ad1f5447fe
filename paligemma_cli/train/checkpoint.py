"""Atomic checkpoints: written to a hidden temp folder, fsynced, then renamed into place.

A crash mid-write leaves only a `.tmp-*` folder, which resume ignores and the next save removes.
A checkpoint holds the adapter, the optimiser and scheduler states, every RNG state, and the loop
position (epoch, micro-batch) so a resumed run continues bit-for-bit. A checkpoint damaged later
(a truncated file, a state file that is not JSON) is skipped: resume walks back to the newest one
that loads completely and says which it skipped and why.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import struct
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import error_code

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
    code = error_code(exc)  # safetensors says "I/O error: ... (os error 28)"
    return os.strerror(code) if code else (str(exc).splitlines() or [type(exc).__name__])[0]


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


def _step_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp folders are not checkpoints)."""
    return [p for _, p in _step_dirs(output_dir) if (p / STATE_FILE).exists()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole: its header names the bytes the file must hold."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if 8 + length > size:
                return f"{path.name} is truncated ({size:,} bytes, less than its header)"
            header = json.loads(fh.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, struct.error, TypeError, KeyError, AttributeError):
        return f"{path.name} is damaged (no valid header)"
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size:,} of {8 + length + end:,} bytes)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None; cheap (no torch): the state file is
    valid, the adapter's safetensors whole, the optimiser, scheduler and RNG archives complete."""
    try:
        LoopState(**json.loads((path / STATE_FILE).read_text()))
    except FileNotFoundError:
        return f"{STATE_FILE} is missing"
    except (OSError, ValueError):
        return f"{STATE_FILE} is not valid JSON"
    except TypeError:
        return f"{STATE_FILE} does not hold pgm's loop state"
    problem = _safetensors_problem(path / "adapter_model.safetensors")
    if problem:
        return problem
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        try:
            zipfile.ZipFile(path / name).close()  # torch.save writes a zip; a cut one has no directory
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, zipfile.BadZipFile):
            return f"{name} is truncated or damaged"
    return None


def _no_checkpoint(output_dir: Path, skipped: list[tuple[Path, str]]) -> PgmError:
    why = f" ({skipped[0][0].name}: {skipped[0][1]})" if skipped else ""
    return PgmError(f"--resume: no complete checkpoint in {Path(output_dir) / CHECKPOINTS}{why}.",
                    "Drop --resume and pass --overwrite to start over.")


def require_resumable(output_dir: Path) -> Path:
    """The newest checkpoint that passes `checkpoint_problem` (a PgmError naming why when none does)."""
    skipped = []
    for _, path in reversed(_step_dirs(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        skipped.append((path, problem))
    raise _no_checkpoint(output_dir, skipped)


def _read_checkpoint(path: Path) -> tuple[dict, dict, dict, LoopState, dict]:
    """Everything in `path`, read before any of it is applied; PgmError names the file that fails."""
    import torch
    from safetensors.torch import load_file

    problem = checkpoint_problem(path)
    if problem:
        raise PgmError(problem)
    loaded = {}
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"):
        try:
            loaded[name] = load_file(str(path / name)) if name.endswith(".safetensors") else \
                torch.load(path / name, weights_only=False)
        except Exception as exc:  # any way a damaged file fails to load: the next older checkpoint
            raise PgmError(f"{name} does not load ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    state = LoopState(**json.loads((path / STATE_FILE).read_text()))
    return (loaded["adapter_model.safetensors"], loaded["optimizer.pt"], loaded["scheduler.pt"], state,
            loaded["rng.pt"])


def resume_from(output_dir: Path, model, optimizer, scheduler
                ) -> tuple[Path, LoopState, dict[str, Any], list[tuple[Path, str]]]:
    """Restore the newest checkpoint that loads completely (adapter, optimiser, scheduler, RNG,
    loop state); returns it, the loop state, the RNG state and the newer ones skipped (why)."""
    from peft import set_peft_model_state_dict

    skipped = []
    for _, path in reversed(_step_dirs(output_dir)):
        try:
            weights, optim, sched, state, rng = _read_checkpoint(path)
        except PgmError as exc:
            skipped.append((path, exc.message))
            continue
        set_peft_model_state_dict(model, weights)
        optimizer.load_state_dict(optim)
        scheduler.load_state_dict(sched)
        return path, state, rng, skipped
    raise _no_checkpoint(output_dir, skipped)
