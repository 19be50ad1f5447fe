"""The one rule set for everything pgm writes: one writer per output, staged writes, own files only.

Every command that writes (train, eval, merge, predict --output, data synth, and whatever comes
next) goes through this module, and nothing else decides how an output is written:

1. **Check first.** `check_output(path, kind, ...)` (a folder) and `check_file(path, ...)` (one
   file) are cheap: call them before any data set or model loads, so a bad output path costs a
   second, not a model load. They change nothing of the user's; they return notes (below).
2. **One writer.** `claim_output` / `claim_file` take an OS advisory lock (`fcntl.lockf` on
   `.pgm-lock` in the folder, or `.<name>.pgm-lock` beside a file) for the whole run. The kernel
   drops it when the process ends, kill -9 included, so it never goes stale, and forked DataLoader
   workers do not inherit it. A second process gets one PgmError line naming the running process
   (from the check, before it loads anything) and changes nothing.
3. **Staged writes.** `Output.staged(name)` yields a path in `.pgm-staging/`; when the block
   succeeds the entry is moved into place (a file by `os.replace`), so a reader never sees half of
   it; `Output.staged()` yields a folder whose entries all move in; `Output.write(name, data)` is
   the one-call form. Entries a command writes in place while it runs (train's log, checkpoints)
   are announced first with `Output.record(name)`, so a crash leaves them known as pgm's.
4. **Own files only.** `.pgm-run.json` lists the top-level entries pgm wrote in the folder. A
   folder holding anything else is refused, `--overwrite` or not (pgm would otherwise mix its files
   with the user's and could not tell them apart later). `--overwrite` replaces exactly the listed
   entries; a path that is a file is refused where a folder goes. One-file outputs are remembered
   (path, inode, size, mtime) in `PGM_HOME/written-files.sqlite`, and `--overwrite` replaces such a
   file only while it is still the one pgm wrote; the file is never renamed.
5. **All or nothing.** What a run writes is provisional until its claim ends normally. The earlier
   run's entries are moved into `.pgm-previous/` when the first new entry lands and deleted at the
   end; on an exception the run's own entries are removed and the earlier ones put back, so a failed
   or interrupted `--overwrite` leaves the earlier results as they were. A run whose partial output
   is worth keeping calls `Output.keep()` (train, once a checkpoint exists: the earlier run is then
   deleted, the new one stays). After a kill -9 the marker still says what the dead run wrote and set
   aside: the next check or claim of the path undoes it, and its notes say what it removed and
   restored (a refused check puts them in its error's hint instead).
6. **Disk errors are one line.** ENOSPC, EDQUOT and EROFS (and EACCES/EPERM on the output) raised
   inside a claim become one PgmError naming the path and, where known (`needed`), the space needed.

Use:

    notes = check_output(out, "eval", overwrite=ow)      # before anything loads
    ...
    with claim_output(out, "eval", overwrite=ow) as output:
        notes += output.notes                            # print them
        output.write("metrics.json", text)
        with output.staged("model") as tmp:              # a folder (or a file) named model
            save(tmp)
    # ended normally: committed; on an exception: rolled back, the earlier results intact

    notes = check_file(path, overwrite=ow, flag="--output")
    with claim_file(path, "predict", overwrite=ow, flag="--output") as target:
        target.write(data)                               # os.replace'd onto path at the end

Only the standard library, `paligemma_cli.errors` and `config.pgm_home` are imported here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from paligemma_cli import __version__
from paligemma_cli.config import pgm_home
from paligemma_cli.errors import PgmError

MARKER = ".pgm-run.json"
RUN_CONFIG = "run_config.json"  # pgm train: every setting, the task, the step count
TRAIN_LOG = "train_log.jsonl"  # pgm train: one line per logged step and per evaluation
MERGE_RECIPE = "pgm_merge.json"  # pgm merge: how the folder was made
LOCK = ".pgm-lock"
STAGING = ".pgm-staging"
PREVIOUS = ".pgm-previous"
BOOKKEEPING = ".pgm-"  # every top-level entry named .pgm-* is pgm's own bookkeeping
REGISTRY = "written-files.sqlite"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
LOCK_WAIT_S = 1.0  # a check in a sibling process holds a shared lock for microseconds
HELD = (errno.EACCES, errno.EAGAIN)  # what lockf raises when another process holds the lock

_held: dict[str, int] = {}  # lock files this process holds -> fd (POSIX locks are per process)


def _named(flag: str, path: Path) -> str:
    return f"{flag} {path}" if flag else str(path)


def _remove(path: Path) -> bool:
    """Remove a file, link or folder; False if there was nothing."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _nearest(path: Path) -> Path:
    return next(p for p in (path, *path.absolute().parents) if p.exists())


# ----- errors -------------------------------------------------------------------------------------

def error_code(exc: BaseException) -> int | None:
    """The errno of a failed write: OSError's, or safetensors' "... (os error 28)"."""
    if isinstance(exc, OSError):
        return exc.errno
    code = re.search(r"os error (\d+)", str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return int(code.group(1)) if code else None


def write_failure(exc: BaseException, path: Path, needed: int | None = None,
                  root: Path | None = None) -> PgmError | None:
    """The one-line PgmError for a disk error while writing `path`, or None for anything else.

    A full disk or a read-only file system is always a write error; EACCES/EPERM only when the
    failing file is under `root` (default `path`): a read of an input can fail that way too.
    """
    code = error_code(exc)
    where = getattr(exc, "filename", None)
    ours = where is not None and str(Path(where).absolute()).startswith(str(Path(root or path).absolute()))
    if code in DISK_FULL:
        free = shutil.disk_usage(_nearest(Path(path))).free
        need = f"it needs {_size(needed)}, " if needed else ""
        return PgmError(f"Writing {path} failed: {os.strerror(code)} ({need}{_size(free)} free).",
                        "Free some space or write elsewhere, then rerun; nothing half-written was left.")
    if code == errno.EROFS or (code in NOT_WRITABLE and ours):
        return PgmError(f"Writing {path} failed: {os.strerror(code)}.", "Choose a folder you can write to.")
    return None


# ----- the lock -----------------------------------------------------------------------------------

def _holder(lock_file: Path) -> tuple[int | None, str]:
    try:
        pid, _, what = lock_file.read_text().partition(" ")
        return int(pid), what.strip() or "run"
    except (OSError, ValueError):
        return None, "run"


def _busy(lock_file: Path, what: str) -> PgmError:
    pid, kind = _holder(lock_file)
    who = f"pgm {kind} (process {pid})" if pid else "another pgm process"
    return PgmError(f"{what} is in use: {who} is writing there.",
                    "Wait for it to finish or stop it, or choose another path.")


def _is_locked(lock_file: Path) -> bool:
    """Whether another process holds `lock_file` (a shared probe, retried for LOCK_WAIT_S so a
    sibling's short check or repair is not taken for a run: changes nothing)."""
    if str(lock_file.absolute()) in _held:
        return False
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock_file, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError as exc:
            if exc.errno not in HELD:  # a file system without locks: nobody can hold one
                return False
            if time.monotonic() > deadline:
                return True
        finally:
            os.close(fd)  # also drops the probe's shared lock
        time.sleep(0.05)


def _lock(lock_file: Path, owner: str, what: str) -> int:
    """Take the exclusive lock on `lock_file` (created if missing) for this process; its fd."""
    key = str(lock_file.absolute())
    if key in _held:
        raise RuntimeError(f"{lock_file} is already claimed by this process")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in HELD:
                os.close(fd)
                if time.monotonic() > deadline:
                    raise _busy(lock_file, what) from None
                time.sleep(0.05)
                continue
            # A file system without POSIX locks (some network and FUSE mounts): go on unlocked
            # rather than refuse every write there; the other rules still hold.
        try:  # the holder may have released and removed the file between our open and lock
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {owner}\n".encode())
            _held[key] = fd
            return fd
        os.close(fd)


def _unlock(lock_file: Path) -> None:
    fd = _held.pop(str(lock_file.absolute()), None)
    if fd is not None:
        lock_file.unlink(missing_ok=True)  # while still held, so no one locks a removed file
        os.close(fd)


# ----- the marker ---------------------------------------------------------------------------------

def read_marker(path: Path) -> dict | None:
    """The folder's `.pgm-run.json` (what pgm wrote there), or None."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("written"), list) else None


def _settled(marker: dict | None) -> tuple[str | None, list[str], set[str]]:
    """(kind, entries) of the finished run the folder holds once an interrupted claim is undone,
    and every top-level name pgm may hold there now."""
    if marker is None:
        return None, [], set()
    unfinished = marker.get("unfinished") or {}
    previous = unfinished.get("previous")
    ours = set(marker["written"]) | set(unfinished.get("pending", []))
    if previous:
        return previous["kind"], list(previous["written"]), ours | set(previous["written"])
    return marker.get("kind"), list(marker["written"]), ours


def _save_marker(path: Path, marker: dict) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"tool": "pgm", "version": __version__, **marker}, indent=1))
    os.replace(tmp, path / MARKER)


def _tree_bytes(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size if path.exists() else 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _undo_unfinished(path: Path, marker: dict) -> list[str]:
    """Roll back a claim that never finished (an exception, or a killed process: we hold the lock):
    remove what it wrote, put back what it set aside. Returns notes saying what was done."""
    unfinished = marker.pop("unfinished", None) or {}
    staged = _tree_bytes(path / STAGING)
    removed = [n for n in unfinished.get("pending", []) if _remove(path / n)]
    _remove(path / STAGING)
    previous, restored = unfinished.get("previous"), []
    if previous:
        for name in previous["written"]:
            if os.path.lexists(path / PREVIOUS / name) and not os.path.lexists(path / name):
                os.rename(path / PREVIOUS / name, path / name)
                restored.append(name)
        marker["kind"], marker["written"] = previous["kind"], list(previous["written"])
    if (path / PREVIOUS).exists() and not any((path / PREVIOUS).iterdir()):
        (path / PREVIOUS).rmdir()
    _save_marker(path, marker)
    notes = []
    if removed or staged:
        what = ", ".join(removed + ([f"{STAGING} ({_size(staged)})"] if staged else []))
        notes.append(f"Removed what an interrupted pgm {unfinished.get('kind', 'run')} (process "
                     f"{unfinished.get('pid')}) left unfinished in {path}: {what}.")
    if restored:
        notes.append(f"Restored the earlier pgm {marker['kind']} output it had set aside: {', '.join(restored)}.")
    return notes


# ----- folders ------------------------------------------------------------------------------------

def _verdict(path: Path, kind: str, overwrite: bool, resume: bool, flag: str) -> dict | None:
    """Raise PgmError unless pgm may write `path` as asked; returns its marker. Reads only."""
    named = _named(flag, path)
    if path.exists() and not path.is_dir():
        raise PgmError(f"{named} is a file.", "Give a folder path.")
    marker = read_marker(path) if path.is_dir() else None
    previous_kind, written, ours = _settled(marker)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in ours
                     and not p.name.startswith(BOOKKEEPING)) if path.is_dir() else []
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise PgmError(f"{named} holds {foreign[0]}{more}, which pgm did not write.",
                       "pgm writes only into a new or empty folder, or over its own earlier output "
                       "(--overwrite replaces only what pgm wrote): move it away or choose another folder.")
    present = [n for n in written if os.path.lexists(path / n)]
    if resume and not present:
        raise PgmError(f"--resume: {path} holds no pgm run to resume.",
                       f"Drop --resume to start a new run, or point {flag or 'the path'} at the earlier run.")
    if resume and previous_kind != kind:
        raise PgmError(f"--resume: {path} holds a pgm {previous_kind}, not a {kind}.", "Drop --resume.")
    if present and not resume and not overwrite:
        how = ("Pass --resume to continue it, or --overwrite to start over." if previous_kind == kind == "train"
               else "Pass --overwrite to replace it, or choose another folder." if previous_kind == kind
               else f"Choose another folder (--overwrite would replace that pgm {previous_kind} with this {kind}).")
        raise PgmError(f"{named} holds a previous pgm {previous_kind}.", how)
    if not os.access(_nearest(path), os.W_OK):  # also false for root on an immutable folder
        raise PgmError(f"{named} is not writable.", "Choose a folder you can write to.")
    return marker


def _repair(path: Path, named: str) -> list[str]:
    """If a pgm run writing `path` was killed, undo its unfinished writes now (under the lock)."""
    marker = read_marker(path)
    if not marker or not marker.get("unfinished"):
        return []
    try:
        _lock(path / LOCK, "check", named)
    except OSError:  # a read-only folder: nothing can be undone, and the checks say why
        return []
    try:
        marker = read_marker(path)
        return _undo_unfinished(path, marker) if marker and marker.get("unfinished") else []
    finally:
        _unlock(path / LOCK)


def check_output(path: Path, kind: str, *, overwrite: bool = False, resume: bool = False,
                 flag: str = "--output-dir") -> list[str]:
    """Raise PgmError unless `path` may be claimed for a `kind` run (train, eval, merge, synth...).

    Refused: a file; a folder holding anything pgm did not write (named); a previous pgm output
    unless `overwrite` (replace it) or `resume` (continue it, same kind); a folder another pgm
    process is writing; a folder that cannot be written. Changes nothing of the user's; only if a
    pgm run writing there was killed, its unfinished output is undone first (see the module
    docstring). Returns notes saying what was undone, for the command to print.
    """
    path = Path(path)
    named = _named(flag, path)
    if _is_locked(path / LOCK):
        raise _busy(path / LOCK, named)
    notes = _repair(path, named) if path.is_dir() else []
    try:
        _verdict(path, kind, overwrite, resume, flag)
    except PgmError as exc:  # still one line, and it says what was undone
        if notes:
            exc.hint = f"{exc.hint} (Before that: {' '.join(notes)})"
        raise
    return notes


class Output:
    """A claimed output folder: write through `staged`/`write`, or `record` then write in place."""

    def __init__(self, path: Path, kind: str, marker: dict, *, overwrite: bool, resume: bool):
        self.path, self.kind = path, kind
        self.notes: list[str] = []  # clean-ups of interrupted runs, for the command to print
        self.needed: int | None = None  # bytes this run will write, when known (disk-full messages)
        self._overwrite, self._kept, self._set = overwrite and not resume, resume, False
        self._marker = marker

    @property
    def _pending(self) -> list[str]:
        return self._marker["unfinished"]["pending"]

    def _save(self) -> None:
        _save_marker(self.path, self._marker)

    def _set_aside(self) -> None:
        """--overwrite: move the earlier run's entries into .pgm-previous (once, before our first write)."""
        if not self._overwrite or self._set:
            return
        self._set = True
        earlier = [n for n in self._marker["written"] if os.path.lexists(self.path / n)]
        if earlier:
            self._marker["unfinished"]["previous"] = {"kind": self._marker.get("kind"), "written": earlier}
        self._marker.update(kind=self.kind, written=[])
        self._save()  # first: a kill during the moves is undone from what the marker says
        if earlier:
            (self.path / PREVIOUS).mkdir(exist_ok=True)
            for name in earlier:
                os.rename(self.path / name, self.path / PREVIOUS / name)

    def record(self, *names: str) -> None:
        """Announce top-level entries about to be written in place (before writing them)."""
        ours = self._marker["written"] + self._pending
        for name in names:
            if os.path.lexists(self.path / name) and name not in ours:
                raise PgmError(f"{self.path / name} appeared while pgm was writing {self.path}; pgm did not "
                               "write it and leaves it alone.", "Move it away and rerun.")
        self._set_aside()
        target = self._marker["written"] if self._kept else self._pending
        new = [n for n in names if n not in self._marker["written"] and n not in self._pending]
        if new:
            target.extend(new)
            self._save()

    def names(self) -> list[str]:
        """The top-level entries pgm holds here for this run: written, recorded or kept from the run
        it resumes (what `pgm train --push-to-hub` may upload)."""
        return list(dict.fromkeys(self._marker["written"] + self._pending))

    def keep(self) -> None:
        """What this run wrote stays even if it later fails (e.g. a resumable checkpoint now exists);
        the earlier run's set-aside entries are removed."""
        if self._kept:
            return
        self._kept = True
        self._set_aside()
        self._marker["written"] += self._pending
        self._marker["unfinished"].update(pending=[], previous=None)
        self._save()
        _remove(self.path / PREVIOUS)

    def _swap(self, src: Path, name: str) -> None:
        dst = self.path / name
        if os.path.lexists(dst) and (dst.is_dir() or src.is_dir()):
            old = self.path / STAGING / f".old-{name}"
            _remove(old)
            os.rename(dst, old)
            os.rename(src, dst)
            _remove(old)
        else:
            os.replace(src, dst)

    @contextmanager
    def staged(self, name: str | None = None) -> Iterator[Path]:
        """A path to write `name` at (a file or a folder); moved into place when the block succeeds.

        Without `name`, an empty folder whose entries all become top-level entries of the output.
        """
        if name is not None and (name.startswith(BOOKKEEPING) or "/" in name):
            raise ValueError(f"not an output entry name: {name!r}")
        staging = self.path / STAGING
        staging.mkdir(exist_ok=True)
        tmp = staging / (name or f"contents-{time.monotonic_ns()}")
        _remove(tmp)
        if name is None:
            tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        names = [name] if name else sorted(p.name for p in tmp.iterdir() if not p.name.startswith(BOOKKEEPING))
        self.record(*names)
        for n in names:
            self._swap(tmp if name else tmp / n, n)
        if name is None:
            _remove(tmp)

    def write(self, name: str, data: bytes | str) -> Path:
        """Write one file, staged; a full disk names it and the bytes it needed."""
        raw = data.encode() if isinstance(data, str) else data
        try:
            with self.staged(name) as tmp:
                tmp.write_bytes(raw)
        except OSError as exc:
            failure = write_failure(exc, self.path / name, len(raw), root=self.path)
            if failure is None:
                raise
            raise failure from None
        return self.path / name

    def _commit(self) -> None:
        self._set_aside()  # --overwrite: earlier entries this run did not rewrite go too
        self._marker["written"] += [n for n in self._pending if n not in self._marker["written"]]
        self._marker.pop("unfinished")
        if self._marker["written"]:
            self._save()
        else:
            (self.path / MARKER).unlink(missing_ok=True)
        for name in (PREVIOUS, STAGING):
            _remove(self.path / name)


def _claim_folder(path: Path, kind: str, overwrite: bool, resume: bool, flag: str) -> Output:
    """Under the lock: undo an interrupted claim, check, and mark the folder as being written."""
    marker = read_marker(path)
    notes = []
    if marker and marker.get("unfinished"):
        notes = _undo_unfinished(path, marker)
    else:  # a kill between a commit's marker and its clean-up leaves these
        for name in (STAGING, PREVIOUS):
            _remove(path / name)
    marker = _verdict(path, kind, overwrite, resume, flag) or {"kind": kind, "written": []}
    if not [n for n in marker["written"] if os.path.lexists(path / n)]:
        marker.update(kind=kind, written=[])  # nothing of an earlier run is left: a fresh folder
    marker["unfinished"] = {"pid": os.getpid(), "kind": kind, "pending": [], "previous": None}
    _save_marker(path, marker)
    output = Output(path, kind, marker, overwrite=overwrite, resume=resume)
    output.notes = notes
    return output


@contextmanager
def claim_output(path: Path, kind: str, *, overwrite: bool = False, resume: bool = False,
                 flag: str = "--output-dir") -> Iterator[Output]:
    """Hold output folder `path` for one `kind` run; yield its `Output` (see the module docstring).

    On entry: the lock, the clean-up of interrupted runs (`Output.notes`), the checks of
    `check_output`. On a normal exit the run's entries become the folder's recorded output (with
    `overwrite`, the earlier run's entries are removed); on an exception they are removed and the
    earlier ones restored, and a disk error becomes one PgmError line.
    """
    path = Path(path)
    named = _named(flag, path)
    if path.exists() and not path.is_dir():
        raise PgmError(f"{named} is a file.", "Give a folder path.")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        _lock(path / LOCK, kind, named)
    except OSError as exc:
        raise PgmError(f"{named} is not writable ({exc.strerror}).", "Choose a folder you can write to.") from None
    output = None
    try:
        output = _claim_folder(path, kind, overwrite, resume, flag)
        yield output
        output._commit()
    except BaseException as exc:
        if output is not None:
            _roll_back(output)
        failure = write_failure(exc, path, output.needed if output else None)
        if failure is not None:
            raise failure from None
        if output is None and isinstance(exc, OSError) and exc.errno in NOT_WRITABLE:
            raise PgmError(f"{named} is not writable.", "Choose a folder you can write to.") from None
        raise
    finally:
        _unlock(path / LOCK)
        if created:
            try:  # a folder this claim made and left empty goes again
                path.rmdir()
            except OSError:
                pass


def _roll_back(output: Output) -> None:
    """An exception inside the claim: undo this run's provisional writes (best effort)."""
    try:
        _undo_unfinished(output.path, output._marker)
        if not output._marker["written"]:
            (output.path / MARKER).unlink(missing_ok=True)
    except OSError:
        pass  # the next claim of this path finishes the clean-up from the marker


# ----- single files -------------------------------------------------------------------------------

@contextmanager
def _registry() -> Iterator[sqlite3.Connection]:
    """PGM_HOME's table of the one-file outputs pgm wrote (SQLite: safe for concurrent pgm runs)."""
    home = pgm_home()
    home.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(home / REGISTRY), timeout=30)
    try:
        with db:  # one transaction
            db.execute("CREATE TABLE IF NOT EXISTS written (path TEXT PRIMARY KEY, ino INTEGER, size INTEGER, "
                       "mtime_ns INTEGER)")
            yield db
    finally:
        db.close()


def _fingerprint(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def written_by_pgm(path: Path) -> bool:
    """Whether file `path` is, unchanged, one pgm wrote (as `claim_file` recorded it)."""
    try:
        key, *stat = _fingerprint(Path(path))
        with _registry() as db:
            row = db.execute("SELECT ino, size, mtime_ns FROM written WHERE path = ?", (key,)).fetchone()
    except (OSError, sqlite3.Error):
        return False
    return row is not None and list(row) == stat


def _remember(path: Path) -> None:
    try:
        with _registry() as db:
            db.execute("INSERT OR REPLACE INTO written VALUES (?, ?, ?, ?)", _fingerprint(path))
    except (OSError, sqlite3.Error):
        pass  # a read-only PGM_HOME: --overwrite will then refuse this file, never more


def _file_lock(path: Path) -> Path:
    return path.parent / f".{path.name}.pgm-lock"


def _file_tmp(path: Path) -> Path:
    return path.parent / f".{path.name}.pgm-tmp"


def check_file(path: Path, *, overwrite: bool = False, flag: str = "--output") -> list[str]:
    """Raise PgmError unless one-file output `path` may be written.

    Refused: a folder; an existing file unless `overwrite` and pgm wrote it (unchanged since); a
    file another pgm process is writing; a folder that cannot be written. Changes nothing of the
    user's; a temp file a killed pgm run left beside `path` is removed (the notes say so).
    """
    path = Path(path)
    named = _named(flag, path)
    if path.is_dir():
        raise PgmError(f"{named} is a folder.", "Give a file name, e.g. answers.jsonl.")
    if _is_locked(_file_lock(path)):
        raise _busy(_file_lock(path), named)
    notes = []
    if os.path.lexists(_file_tmp(path)) and os.access(path.parent, os.W_OK):
        _remove(_file_tmp(path))  # nobody holds the lock: the run that wrote it is gone
        notes.append(f"Removed {_file_tmp(path)}, left unfinished by an interrupted pgm run.")
    if path.exists() and not overwrite:
        raise PgmError(f"{named} already exists.",
                       "Choose another file, or pass --overwrite (pgm replaces only a file it wrote).")
    if path.exists() and not written_by_pgm(path):
        raise PgmError(f"{named} was not written by pgm (or was changed since).",
                       "pgm never overwrites files it did not write: move it away or choose another file.")
    if not os.access(_nearest(path.parent), os.W_OK):
        raise PgmError(f"{named}: its folder is not writable.", "Choose a folder you can write to.")
    return notes


class FileOutput:
    """A claimed one-file output: write `tmp`; it replaces `path` when the claim ends normally."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, _file_tmp(path)
        self.notes: list[str] = []
        self.needed: int | None = None

    def write(self, data: bytes | str) -> Path:
        """Write the whole file (put in place when the claim ends); returns its final path."""
        raw = data.encode() if isinstance(data, str) else data
        self.needed = len(raw)
        self.tmp.write_bytes(raw)
        return self.path


@contextmanager
def claim_file(path: Path, kind: str, *, overwrite: bool = False, flag: str = "--output") -> Iterator[FileOutput]:
    """Hold one-file output `path`: lock beside it, yield a `FileOutput` whose `tmp` the command
    writes; `os.replace` puts it in place at the end (an exception removes it, the earlier file
    stays). The user's file is never renamed; a disk error becomes one PgmError line."""
    path = Path(path)
    named = _named(flag, path)
    notes = check_file(path, overwrite=overwrite, flag=flag)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _lock(_file_lock(path), kind, named)
    except OSError as exc:
        raise PgmError(f"{named}: cannot write there ({exc.strerror}).", "Choose a folder you can write to.") from None
    target = FileOutput(path)
    try:
        target.notes = notes + check_file(path, overwrite=overwrite, flag=flag)  # again, under the lock
        yield target
        if target.tmp.exists():
            os.replace(target.tmp, path)
            _remember(path)
    except BaseException as exc:
        target.tmp.unlink(missing_ok=True)
        failure = write_failure(exc, path, target.needed, root=path.parent)
        if failure is not None:
            raise failure from None
        raise
    finally:
        _unlock(_file_lock(path))
