"""The up-front image check: every image file a run will use exists and opens, before training.

At real size (83k VQAv2 / 149k GQA images, often on a network disk) a sequential check is minutes
of silence, so on a slow disk the files are checked in threads (opening a file waits on the disk,
which releases the GIL), progress is reported through a callback, and each file that passed is
remembered in a small SQLite table in PGM_HOME keyed by its absolute path, size and mtime: a rerun,
a `--resume` or a new run on the same data re-opens only files that changed. Under several
processes each checks a disjoint 1/N of the unique images and the caller combines the results
(`combine`), so the check takes 1/N of the time and still covers every image any process may draw
in any epoch.
"""

from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from paligemma_cli.errors import PgmError

CACHE_FILE = "image-check.sqlite"
THREADS = 16  # enough to hide a network disk's latency
SLOW_FILE_S = 0.0005  # per file; a page-cached small JPEG takes ~0.03-0.1 ms here
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
    # A compact record (tasks.records) builds its path on each access: take one record per (split,
    # image key) first, so a path is built per image, not per question (0.7 s instead of 2.9 s at
    # VQAv2 train size).
    first: dict = {}
    for ex in examples:
        key = getattr(ex, "image_key", None)
        first.setdefault(id(ex) if key is None else (id(ex.kind), key), ex)
    refs = (ex.image for ex in first.values())
    return list(dict.fromkeys(os.fspath(r) for r in refs if r is not None and not callable(r)))


def default_cache() -> Path:
    from paligemma_cli.config import pgm_home

    return pgm_home() / CACHE_FILE


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
                 advance: Callable[[int], None] | None = None, threads: int | None = None) -> CheckResult:
    """Check this process's share (`paths[rank::world]`); `advance(n)` is called as files are done.

    Files that pass are added to the cache (`cache=None`: the default in PGM_HOME) as they are done,
    so an interrupted check resumes where it stopped. `threads=None` times the first files: a disk
    that answers slower than SLOW_FILE_S per file (network, spinning) gets THREADS threads to hide
    its latency; a fast one (local SSD, page cache) is CPU-bound work under the GIL, where threads
    only add switching (measured 1.4x slower here), so it stays on this thread.
    """
    mine = [p if os.path.isabs(p) else os.path.abspath(p) for p in paths[rank::world]]
    result = CheckResult()
    store = CheckCache(cache or default_cache())

    def take(done) -> None:
        passed, missing, corrupt, cached, n = done
        if passed:
            store.add(passed)
        result.missing += missing
        result.corrupt += corrupt
        result.cached += cached
        result.checked += n
        if advance:
            advance(n)

    try:
        known = store.known(mine)
        chunks = [mine[i:i + CHUNK] for i in range(0, len(mine), CHUNK)]
        if threads is None and chunks:
            from PIL import Image

            Image.preinit()  # its plugin imports (tens of ms under load) are not disk time
            start = time.perf_counter()
            take(_check_chunk(chunks[0], known))
            slow = (time.perf_counter() - start) / len(chunks[0]) > SLOW_FILE_S
            threads, chunks = (THREADS if slow else 1), chunks[1:]
        if threads == 1:
            for chunk in chunks:
                take(_check_chunk(chunk, known))
        else:
            with ThreadPoolExecutor(threads) as pool:
                for done in pool.map(lambda c: _check_chunk(c, known), chunks):
                    take(done)
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
