"""Output folders pgm owns: a marker says so, and nothing pgm did not write is ever removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from paligemma_cli import __version__
from paligemma_cli.errors import PgmError

MARKER = ".pgm-run.json"
RUN_CONFIG = "run_config.json"  # pgm train: every setting, the task, the step count
TRAIN_LOG = "train_log.jsonl"  # pgm train: one line per logged step and per evaluation
MERGE_RECIPE = "pgm_merge.json"  # pgm merge: how the folder was made


def _marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


# What each kind of run writes at the top of its folder; a file of one of these names that pgm did
# not write would be replaced, so it is refused even with --overwrite.
WRITES = {"train": {"adapter_config.json", "adapter_model.safetensors", "README.md", "run_config.json",
                    "train_log.jsonl", "loss.png", "checkpoints", "best", "wandb", "tensorboard"},
          "eval": {"predictions.jsonl", "metrics.json"}}
PROCESSOR_PREFIXES = ("tokenizer", "processor", "preprocessor", "special_tokens", "chat_template", "added_tokens")


def _pgm_would_write(name: str, kind: str) -> bool:
    return name in WRITES.get(kind, set()) or (kind == "train" and name.startswith(PROCESSOR_PREFIXES))


def check_output_dir(path: Path, *, overwrite: bool, resume: bool, kind: str = "train") -> dict | None:
    """Raise PgmError unless `path` may be used (see `prepare_output_dir`); change nothing.

    Returns the folder's pgm marker, if any. Cheap: run it before loading data or models.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PgmError(f"--output-dir {path} is a file.", "Give a folder path.")
    entries = [p for p in path.iterdir()] if path.exists() else []
    marker = _marker(path) if entries else None
    if entries and marker is None and not overwrite:
        raise PgmError(f"--output-dir {path} already holds files pgm did not write.",
                       "Choose another folder, or pass --overwrite (pgm never deletes files it did not write).")
    if resume and marker is None:
        raise PgmError(f"--resume: {path} holds no pgm run to resume.",
                       "Drop --resume to start a new run, or point --output-dir at the earlier run.")
    if not resume:
        written = set(marker.get("written", [])) if marker else set()
        clash = sorted(p.name for p in entries if p.name not in written and _pgm_would_write(p.name, kind))
        if clash:
            raise PgmError(f"--output-dir {path} holds {', '.join(clash)}, which pgm did not write and would "
                           "overwrite.", "Move those files away or choose another folder.")
    if marker is not None and not resume:
        ours = [path / name for name in marker.get("written", []) if (path / name).exists()]
        if ours and not overwrite:
            previous = marker.get("kind", "run")
            how = ("Pass --resume to continue it, or --overwrite to start over." if previous == kind == "train"
                   else "Pass --overwrite to replace it, or choose another folder.")
            raise PgmError(f"--output-dir {path} holds a previous pgm {previous}.", how)
    nearest = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not os.access(nearest, os.W_OK):  # also false for root on an immutable folder
        raise PgmError(f"--output-dir {path} is not writable.", "Choose a folder you can write to.")
    return marker


def prepare_output_dir(path: Path, *, overwrite: bool, resume: bool, kind: str = "train") -> Path:
    """Check `path` may be written and claim it.

    A missing or empty folder is claimed. A folder with files pgm did not write is refused unless
    `overwrite` (and even then those files are left alone, and refused if pgm would write a file of
    the same name). A previous pgm run is refused unless `resume` (continue it) or `overwrite`
    (pgm removes only what it wrote itself).
    """
    path = Path(path)
    marker = check_output_dir(path, overwrite=overwrite, resume=resume, kind=kind)
    if marker is not None and not resume:
        for p in (path / name for name in marker.get("written", [])):
            if p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError
        probe = path / ".pgm-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise PgmError(f"--output-dir {path} is not writable.", "Choose a folder you can write to.") from None
    if marker is None or not resume:
        record_written(path, [], kind=kind, reset=True)
    return path


def written_names(path: Path) -> list[str]:
    """The top-level names pgm recorded as written in `path` (empty without a marker)."""
    return list((_marker(Path(path)) or {}).get("written", []))


def record_written(path: Path, names: list[str], *, kind: str = "train", reset: bool = False) -> None:
    """Add top-level `names` to the list of things pgm wrote in `path` (what --overwrite may remove)."""
    marker = {} if reset else (_marker(path) or {})
    written = list(dict.fromkeys(list(marker.get("written", [])) + names))
    data = {"tool": "pgm", "version": __version__, "kind": marker.get("kind", kind), "written": written}
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path / MARKER)
