"""Output folders pgm owns: a marker says so, and nothing pgm did not write is ever removed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from paligemma_cli import __version__
from paligemma_cli.errors import PgmError

MARKER = ".pgm-run.json"


def _marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def prepare_output_dir(path: Path, *, overwrite: bool, resume: bool, kind: str = "train") -> Path:
    """Check `path` may be written and claim it.

    A missing or empty folder is claimed. A folder with files pgm did not write is refused unless
    `overwrite` (and even then those files are left alone). A previous pgm run is refused unless
    `resume` (continue it) or `overwrite` (pgm removes only what it wrote itself).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PgmError(f"--output-dir {path} is a file.", "Give a folder path.")
    entries = [p for p in path.iterdir()] if path.exists() else []
    marker = _marker(path) if entries else None
    if entries and marker is None and not overwrite:
        raise PgmError(f"--output-dir {path} already holds files pgm did not write.",
                       "Choose another folder, or pass --overwrite (pgm never deletes files it did not write).")
    if marker is not None and not resume:
        ours = [path / name for name in marker.get("written", []) if (path / name).exists()]
        if ours and not overwrite:
            raise PgmError(f"--output-dir {path} holds a previous pgm {marker.get('kind', 'run')}.",
                           "Pass --resume to continue it, or --overwrite to start over.")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if resume and marker is None:
        raise PgmError(f"--resume: {path} holds no pgm run to resume.",
                       "Drop --resume to start a new run, or point --output-dir at the earlier run.")
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


def record_written(path: Path, names: list[str], *, kind: str = "train", reset: bool = False) -> None:
    """Add top-level `names` to the list of things pgm wrote in `path` (what --overwrite may remove)."""
    marker = {} if reset else (_marker(path) or {})
    written = list(dict.fromkeys(list(marker.get("written", [])) + names))
    data = {"tool": "pgm", "version": __version__, "kind": marker.get("kind", kind), "written": written}
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path / MARKER)
