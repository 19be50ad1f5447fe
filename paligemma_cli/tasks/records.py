"""Compact examples read from official files, and the typed JSON reading behind them.

VQAv2 train has 443,757 questions and GQA train 943,000: one `Example` dataclass per question, each
with its own `pathlib.Path`, prompt string and meta dict, cost seconds and hundreds of MB before the
first step (and ~10 s per 214k questions just to score a results file). A `Record` keeps only what
differs per question (id, question, answers, image key, one extra value) in slots, and builds the
image path, prompt and meta dict from a `RecordKind` shared by the whole split when asked for.
Official files are decoded with msgspec into structs holding only the fields pgm uses: the rest
of each entry is skipped without becoming Python objects.
"""

from __future__ import annotations

import gc
import mmap
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Optional

import msgspec

from paligemma_cli.errors import PgmError


@contextmanager
def paused_gc():
    """No cyclic garbage collection while millions of acyclic objects are built.

    Each full collection walks every tracked object, and building GQA's 2 M questions triggers
    many: measured 2.5-3x slower with the collector on. Nothing built here forms cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RecordKind:
    """What the records of one loaded split share: image folder and file-name pattern, prompt template, meta names."""

    __slots__ = ("folder", "pattern", "template", "meta_names")

    def __init__(self, folder: Path, pattern: str, template: str, meta_names: tuple[str | tuple[str, ...] | None, ...]):
        self.folder, self.pattern, self.template, self.meta_names = folder, pattern, template, meta_names


class Record(msgspec.Struct, gc=False):
    """One example of an official split, with `Example`'s attributes (image, prefix, meta built on access).

    A msgspec Struct: slots, built in C, and not tracked by the garbage collector (records hold no
    cycles), which keeps a million of them cheap to build and to keep.
    """

    id: Hashable
    question: Optional[str]
    answers: list[str]
    image_key: Any
    info: Any
    kind: Any  # the split's RecordKind

    @property
    def image(self) -> Path:
        return self.kind.folder / self.kind.pattern.format(self.image_key)

    @property
    def prefix(self) -> str:
        # Task.prefix with the split's template, inlined: a call less per record (214k prompts a scoring).
        return self.kind.template.format(question=self.question or "").strip()

    @property
    def meta(self) -> dict[str, Any]:
        # meta_names name (question, image key, info) in that order; None skips one. A tuple of
        # names for info names the values of an info tuple (those that are None are left out).
        meta = {}
        for name, value in zip(self.kind.meta_names, (self.question, self.image_key, self.info)):
            if isinstance(name, tuple):
                meta.update((n, v) for n, v in zip(name, value or ()) if v is not None)
            elif name is not None:
                meta[name] = value
        return meta

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, image={str(self.image)!r}, prefix={self.prefix!r}, answers={self.answers!r})"


def read_bytes(path: Path, what: str) -> bytes | mmap.mmap:
    """The file's bytes; a big file is mapped rather than copied (GQA's val_all_questions.json is 1.5 GB)."""
    if not path.exists():
        raise PgmError(f"Expected {what} at {path}, but it does not exist.",
                       "Check --data-root and the split name; `pgm data layout TASK` shows the expected files.")
    try:
        if path.is_file() and path.stat().st_size > _MAP_ABOVE:
            with open(path, "rb") as fh:
                return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return path.read_bytes()
    except OSError as exc:
        raise PgmError(f"Cannot read {path}: {exc.strerror}.", "Check its permissions.") from None


_MAP_ABOVE = 64 << 20


def decode_json(path: Path, what: str, type: Any = Any) -> Any:
    """Read an official JSON file into `type` (msgspec), naming the file, place and fix in any error."""
    data = read_bytes(path, what)
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise PgmError(f"{path} does not have the official schema: {_schema_detail(str(exc), bytes(data))}.",
                       "Is this the right file for the task? `pgm data layout TASK` shows the expected files.") from None
    except msgspec.DecodeError as exc:
        raise PgmError(f"{path} is not valid JSON (line {_line_of(str(exc), bytes(data))}).",
                       "Re-download or re-extract the file.") from None


def _line_of(message: str, data: bytes) -> int:
    # msgspec names the byte ("... (byte 1234)"); a truncated file ends at its last line.
    if "(byte " in message:
        byte = int(message.rsplit("(byte ", 1)[1].rstrip(")"))
    else:
        byte = len(data)
    return data.count(b"\n", 0, byte) + 1


def _schema_detail(message: str, data: bytes) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.questions[0].image_id`" with the value it got."""
    text, _, where = message.partition(" - at ")
    where = where.strip("`") or "$"
    if text.startswith("Object missing required field"):
        field = text.rsplit(" ", 1)[1].strip("`")
        return f"no field '{field}' at {where}"
    got = _value_at(msgspec.json.decode(data), where)
    shown = "" if got is _NOT_FOUND else f" (got {got!r:.60})"
    return f"{text[0].lower()}{text[1:]} at {where}{shown}"


_NOT_FOUND = object()


def _value_at(obj: Any, where: str) -> Any:
    """The value at a msgspec path ($.a[0].b); `[...]` (a dict value) is not followed."""
    for part in where.lstrip("$").replace("[", ".[").split("."):
        if not part:
            continue
        try:
            obj = obj[int(part[1:-1])] if part.startswith("[") else obj[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return _NOT_FOUND
    return obj


class LazyObjects(Mapping):
    """A big JSON object of objects ({id: entry}) whose entries are decoded only when looked up.

    GQA's val_all_questions.json holds 2.0 M questions (~1.5 GB); scoring needs the 132k balanced
    ones and those they entail. Keys are decoded up front (membership, iteration in file order);
    each value stays raw JSON until asked for, then decodes into `type` (unknown fields skipped).
    """

    def __init__(self, path: Path, what: str, type: Any):
        self.path = path
        self._raw: dict[str, msgspec.Raw] = decode_json(path, what, dict[str, msgspec.Raw])
        self._decoder = msgspec.json.Decoder(type)

    def __getitem__(self, key: str) -> Any:
        raw = self._raw[key]
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise PgmError(f"{self.path} entry {key!r} does not have the official schema "
                           f"({_schema_detail(str(exc), bytes(raw))}).", "Is this the right file for the task?") from None

    def decode_some(self, keys: Iterable[str]) -> dict[str, Any]:
        """{key: decoded entry} for those of `keys` present (absent ones are left out)."""
        raw = self._raw
        return {key: self[key] for key in keys if key in raw}

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)
