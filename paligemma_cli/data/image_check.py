"""The up-front image check: every image file a run will use exists and opens, before training.

At real size (83k VQAv2 / 149k GQA images, often on a network disk) a sequential check is minutes of
silence, so the files are checked in threads (opening a file waits on the disk, which releases the
GIL), progress is reported through a callback, and each file that passed is remembered in a small
SQLite table in PGM_HOME keyed by its absolute path, size and mtime: a rerun, a `--resume` or a new
run on the same data re-opens only files that changed. Under several processes each checks a
disjoint 1/N of the unique images and the caller combines the results (`combine`), so the check
takes 1/N of the time and still covers every image any process may draw in any epoch.
"""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from paligemma_cli.errors import PgmError

CACHE_FILE = "image-check.sqlite"
THREADS = 16  # enough to hide a network disk's latency; on a local disk the cost is ~2x at worst
CHUNK = 256  # files per task: progress granularity and per-task overhead


@dataclass
class CheckResult:
    """One process's share of the check."""

    checked: int = 0  # files looked at by this process
    cached: int = 0  # of which unchanged since an earlier check passed them
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def image_files(examples: Iterable) -> list[str]:
    """The unique image files of `examples`, in first-seen order (loaders and hub images skipped)."""
    seen: dict[str, None] = {}
    for ex in examples:
        ref = ex.image
        if isinstance(ref, (str, os.PathLike)):
            seen.setdefault(os.fspath(ref), None)
    return list(seen)


def default_cache() -> Path:
    from paligemma_cli.engine.tiny import tiny_cache_dir  # PGM_HOME, the folder pgm caches in

    return tiny_cache_dir() / CACHE_FILE


class CheckCache:
    """Files that passed: absolute path -> (size, mtime_ns). Safe for several processes at once.

    A cache that cannot be opened or written (read-only or full PGM_HOME) is dropped, not an error:
    the check itself is what must run.
    """

    def __init__(self, path: Path):
        self.db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=60)
            self.db.execute("CREATE TABLE IF NOT EXISTS passed (path TEXT PRIMARY KEY, size INTEGER, "
                            "mtime_ns INTEGER) WITHOUT ROWID")
        except (OSError, sqlite3.Error):
            self.close()

    def known(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Entries under the folders of `paths` (a range scan per folder, not one query per file)."""
        out: dict[str, tuple[int, int]] = {}
        if self.db is None:
            return out
        for folder in {os.path.dirname(p) for p in paths}:
            lo, hi = folder + os.sep, folder + chr(ord(os.sep) + 1)
            rows = self.db.execute("SELECT path, size, mtime_ns FROM passed WHERE path >= ? AND path < ?", (lo, hi))
            out.update((p, (s, m)) for p, s, m in rows)
        return out

    def add(self, rows: list[tuple[str, int, int]]) -> None:
        if self.db is None:
            return
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO passed VALUES (?, ?, ?)", rows)
        except sqlite3.Error:
            self.close()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _check_chunk(paths: list[str], known: dict[str, tuple[int, int]]):
    from PIL import Image, UnidentifiedImageError

    passed, missing, corrupt, cached = [], [], [], 0
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            missing.append(path)
            continue
        key = (st.st_size, st.st_mtime_ns)
        if known.get(path) == key:
            cached += 1
            continue
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            corrupt.append(path)
            continue
        passed.append((path, *key))
    return passed, missing, corrupt, cached, len(paths)


def check_images(paths: Sequence[str], *, rank: int = 0, world: int = 1, cache: Path | None = None,
                 advance: Callable[[int], None] | None = None, threads: int = THREADS) -> CheckResult:
    """Check this process's share (`paths[rank::world]`); `advance(n)` is called as files are done.

    Files that pass are added to the cache (`cache=None`: the default in PGM_HOME) as they are done,
    so an interrupted check resumes where it stopped.
    """
    mine = [os.path.abspath(p) for p in paths[rank::world]]
    result = CheckResult()
    store = CheckCache(cache or default_cache())
    try:
        known = store.known(mine)
        chunks = [mine[i:i + CHUNK] for i in range(0, len(mine), CHUNK)]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for passed, missing, corrupt, cached, n in pool.map(lambda c: _check_chunk(c, known), chunks):
                if passed:
                    store.add(passed)
                result.missing += missing
                result.corrupt += corrupt
                result.cached += cached
                result.checked += n
                if advance:
                    advance(n)
    finally:
        store.close()
    return result


def combine(results: Sequence[CheckResult], total: int) -> None:
    """Raise one PgmError for all processes' results: name the first bad file, count the rest."""
    for what, fix in (("missing", "Check --data-root and the image folder layout."),
                      ("corrupt", "Re-download or delete those files (and their questions).")):
        bad = sorted(p for r in results for p in getattr(r, what))
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            word = "missing" if what == "missing" else "unreadable"
            raise PgmError(f"Image {bad[0]} is {word}{more} ({len(bad)} of {total} images).", fix)
