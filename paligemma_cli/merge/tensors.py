"""The merge tensor by tensor, chunk by chunk, independent of where the result goes.

`MergeStream(job).chunks()` yields the merged model in the base's tensor order, each tensor as
row chunks in its own dtype: `pgm merge` writes them to sharded safetensors, and an in-memory
caller (`pgm study`) takes `MergeStream(job).tensors()` or `merged_state_dict(job)` and gets the
same bytes without writing a model.

Memory stays bounded by one chunk's working set (CHUNK_ENTRIES entries in fp32, a few copies)
plus, for tensors whose whole-tensor statistics are needed (TIES' top-k, Breadcrumbs' window,
slerp's angle, the SVD methods' Gram matrices), their raw input rows kept between the statistics
pass and the merge pass when they fit CACHE_BYTES; larger tensors (a 3B model's embedding) are
read again instead. The SVD methods take matrices up to SVD_DIRECT_ENTRIES whole; larger tall
ones stream through gram.py in two passes, larger wide ones are held whole and done transposed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from paligemma_cli.merge import gram
from paligemma_cli.merge.fused import fusable
from paligemma_cli.merge.methods import (MergeParams, MergeStats, Method, TensorHints, cosine_from_sums,
                                         slerp_cosine)
from paligemma_cli.merge.sources import FullModel, TensorInfo, module_name, read_rows
from paligemma_cli.merge.sparsify import kth_largest, rows_per_block, window_sets
from paligemma_cli.merge.spectral import is_matrix
from paligemma_cli.merge.writer import ITEM_BYTES

CHUNK_ENTRIES = 1 << 22  # rows per chunk are chosen so a chunk holds at most about this many
CACHE_BYTES = 768 * 1024**2  # raw input rows kept between a tensor's two passes, at most
SAMPLE_ENTRIES, SAMPLE_GROUPS = 1 << 18, 64  # top-k bracket: entries sampled per tensor, runs
SVD_DIRECT_ENTRIES = 1 << 22  # larger matrices go through the streamed Gram form (gram.py)
FLOAT_DTYPES = ("F64", "F32", "BF16", "F16")
PARTS = (("model.language_model.", "language model"), ("lm_head.", "language model"),
         ("model.vision_tower.", "vision tower"), ("model.multi_modal_projector.", "projector"))
Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)
SideInputs = Callable[[str], Any]  # module weight name (transformers 5 spelling) -> per-input extras


@dataclass
class MergeJob:
    """A merge ready to run: the method and its knobs, the base's tensor headers, the opened and
    checked inputs (sources.FullModel / sources.Adapter, in --model order). `driver.prepare`
    builds one from a MergeRequest.

    `side_inputs`, when set, is called once per merged tensor with its name and its result is
    handed to the method as `TensorHints.side`: the place for per-tensor inputs beyond the
    weights, such as a data-aware method's per-expert Gram matrices of the layer's inputs.
    """

    method: Method
    params: MergeParams
    base: dict[str, TensorInfo]
    inputs: list
    side_inputs: SideInputs | None = None
    side_info: dict = field(default_factory=dict)  # what the side inputs came from (pgm_merge.json)


def part_of(key: str) -> str:
    name = module_name(key)
    return next((label for prefix, label in PARTS if name.startswith(prefix)), "other")


def zero_safe(method: Method, params: MergeParams) -> bool:
    """True when inputs equal to the base give the base back (all but an un-normalised linear)."""
    return not (method.name == "linear" and not params.normalize and sum(params.weights) != 1.0)


def _chunk_rows(info: TensorInfo, whole: bool = False) -> list[tuple[int, int] | None]:
    """Row ranges of a tensor, multiples of the random masks' blocks; [None] = read it whole."""
    numel = math.prod(info.shape)
    if whole or not info.shape or numel <= CHUNK_ENTRIES:
        return [None]
    block = rows_per_block(info.shape)
    row = numel // info.shape[0]
    step = max(1, CHUNK_ENTRIES // (row * block)) * block
    return [(r, min(r + step, info.shape[0])) for r in range(0, info.shape[0], step)]


class TensorMerge:
    """Merges one tensor of the base: reads chunks, runs the statistics pass when the method
    needs one, merges. Yields merged changes; the caller adds the base (`add_to_base`)."""

    def __init__(self, key: str, info: TensorInfo, inputs: list, method: Method, params: MergeParams,
                 side_inputs: SideInputs | None = None):
        self.key, self.info, self.inputs, self.method, self.p = key, info, inputs, method, params
        self.side_inputs = side_inputs
        numel = math.prod(info.shape)
        matrix = method.spectral and is_matrix(module_name(key), info.shape)
        self.streamed = matrix and numel > SVD_DIRECT_ENTRIES
        whole = (matrix and not (self.streamed and info.shape[0] >= info.shape[1])) or \
            (method.sparsify == "magprune" and len(info.shape) < 2)  # ranks span a 1-D tensor
        self.rows = _chunk_rows(info, whole)
        raw_bytes = numel * ITEM_BYTES[info.dtype]
        n_read = 1 + sum(isinstance(i, FullModel) for i in inputs)
        # the SVD methods' second pass reads again: their solve, not reading, is what costs, and
        # the memory is better spent on it
        two_passes = len(self.rows) > 1 and not self.streamed
        self.cache: dict | None = {} if two_passes and raw_bytes * n_read <= CACHE_BYTES else None
        self.unchanged: dict = {}  # (rows, input) -> the input's rows equal the base's (checked once)
        # task-vector methods only need the base's shape; converting it is a pass they skip
        self.base_values = method.sparsify is None and not method.takes_lambda or \
            any(not isinstance(i, FullModel) for i in inputs)

    def raws(self, rows) -> list[torch.Tensor | None]:
        """The base's rows and each full model's rows as stored (None for adapters), cached
        between passes when the tensor is small enough."""
        if self.cache is not None and rows in self.cache:
            return self.cache[rows]
        name = module_name(self.key)
        raws = [read_rows(self.info.file, self.key, rows)]
        raws += [read_rows(i.tensors[i.by_module[name]].file, i.by_module[name], rows)
                 if isinstance(i, FullModel) else None for i in self.inputs]
        if self.cache is not None:
            self.cache[rows] = raws
        return raws

    def same_as_base(self, rows, i: int, raw: torch.Tensor, base_raw: torch.Tensor) -> bool:
        if (rows, i) not in self.unchanged:
            self.unchanged[rows, i] = raw.dtype == base_raw.dtype and torch.equal(raw, base_raw)
        return self.unchanged[rows, i]

    def fused_chunks(self, stats: MergeStats):
        """Task arithmetic over full models, base + lam * sum w_i tau_i, in one fused pass per
        chunk: the arithmetic of `combine` and `add_to_base`, in their order, without storing
        any float32 task vector. Yields (base raw, merged chunk or None where it is the base's)."""
        p = self.p
        self.cache = None  # one pass: nothing to keep between passes
        divide = p.normalize and abs(sum(p.weights)) > 1e-8
        for rows in self.rows:
            raws = self.raws(rows)
            if all(self.same_as_base(rows, i, raw, raws[0]) for i, raw in enumerate(raws[1:])):
                yield raws[0], None
                continue
            stats.add(MergeStats(entries=raws[0].numel() * len(self.inputs)))
            yield raws[0], _task_arithmetic(raws[0], raws[1:], tuple(float(w) for w in p.weights),
                                            divide, float(p.lam))

    def chunk(self, rows, magnitudes: bool = False):
        """(base raw, base fp32, per-input tau or None where it is zero) for `rows`; with
        `magnitudes`, |tau| instead of tau. Task-vector methods get the raw base in place of
        the fp32 one (they read only its shape)."""
        raws = self.raws(rows)
        base_raw = raws[0]
        base = base_raw.float() if self.base_values else base_raw
        values = []
        for i, (src, raw) in enumerate(zip(self.inputs, raws[1:])):
            if raw is None:
                delta = src.delta(self.key, rows, base, base_raw)
                values.append(delta.abs_() if magnitudes and delta is not None else delta)
                continue
            if self.same_as_base(rows, i, raw, base_raw):
                values.append(None)
            else:
                values.append((_magnitude if magnitudes else _task_vector)(raw, base_raw))
        return base_raw, base, values

    def sample(self) -> list[torch.Tensor | None]:
        """Per input, |tau| on SAMPLE_GROUPS evenly spread runs of rows (about SAMPLE_ENTRIES in
        all), read apart from the chunks: it only narrows the search for the exact top-k."""
        n_rows = self.info.shape[0]
        row = math.prod(self.info.shape) // n_rows
        groups = min(SAMPLE_GROUPS, n_rows)
        per = max(1, SAMPLE_ENTRIES // (groups * row))
        parts: list[list[torch.Tensor]] = [[] for _ in self.inputs]
        for g in range(groups):
            start = g * n_rows // groups
            rows = (start, min(n_rows, start + per))
            base_raw = read_rows(self.info.file, self.key, rows)
            for i, src in enumerate(self.inputs):
                if isinstance(src, FullModel):
                    key = src.by_module[module_name(self.key)]
                    mag = _magnitude(read_rows(src.tensors[key].file, key, rows), base_raw)
                else:
                    delta = src.delta(self.key, rows, base_raw.float(), base_raw)
                    mag = torch.zeros(base_raw.shape) if delta is None else delta.abs_()
                parts[i].append(mag.reshape(-1))
        return [torch.cat(p) for p in parts]

    def hints(self) -> TensorHints:
        """Whole-tensor statistics from a first pass over the chunks (when there are several)."""
        name = module_name(self.key)
        hints = TensorHints(name=name, full_shape=self.info.shape,
                            side=self.side_inputs(name) if self.side_inputs else None)
        if len(self.rows) == 1:
            return hints
        numel = math.prod(self.info.shape)

        def magnitudes():
            for rows in self.rows:
                _, _, mags = self.chunk(rows, magnitudes=True)
                yield (rows[1] - rows[0]) * (numel // self.info.shape[0]), mags

        n = len(self.inputs)
        if self.method.sparsify == "magnitude" and self.p.density < 1.0:
            hints.cutoffs = kth_largest(magnitudes, [int(self.p.density * numel)] * n, numel, self.sample())
        elif self.method.sparsify == "breadcrumbs" and self.p.density < 1.0:
            hints.windows = window_sets(magnitudes, numel, n, self.p.density, self.p.gamma, self.sample())
        elif self.method.name == "slerp":
            sums = [0.0, 0.0, 0.0]
            for rows in self.rows:
                _, base, deltas = self.chunk(rows)
                v0, v1 = (base if d is None else base + d for d in deltas)
                sums = [a + b for a, b in zip(sums, slerp_cosine(v0, v1))]
            hints.cos = cosine_from_sums(*sums)
        return hints

    def rank_bounds(self, zero: list[bool]) -> tuple[int | None, ...]:
        """Per input, what is known of its task vector's rank here (0 where it is all zero)."""
        return tuple(0 if z else src.rank_bound(self.key) for src, z in zip(self.inputs, zero))

    def merged_chunks(self, stats: MergeStats, zero_safe: bool):
        """Yield (base raw, base fp32 or raw, merged change or None where the chunk is the base's)."""
        if self.streamed:
            yield from self.streamed_chunks(stats)
            return
        hints = self.hints()
        for rows in self.rows:
            base_raw, base, deltas = self.chunk(rows)
            if all(d is None for d in deltas) and zero_safe:
                yield base_raw, base, None
                continue
            hints.ranks = self.rank_bounds([d is None for d in deltas])
            deltas = [torch.zeros(base.shape) if d is None else d for d in deltas]
            hints.row0 = rows[0] if rows else 0
            merged, chunk_stats = self.method(base, deltas, self.p, hints)
            stats.add(chunk_stats)
            yield base_raw, base, merged

    def streamed_chunks(self, stats: MergeStats):
        """The SVD methods on a large matrix through gram.py: a pass accumulating the Gram
        matrix, then a pass writing Z[rows] M. A wide matrix is held whole and done transposed."""
        m, n = self.info.shape
        tall, tasks = m >= n, len(self.inputs)
        acc = gram.GramAccumulator(tasks, min(m, n), self.method.name == "iso_c", self.p.device)
        held = None if tall else self.chunk(None)
        zero = [True] * tasks

        def views():  # tall row chunks of each task matrix (of its transpose when wide)
            if tall:
                for rows in self.rows:
                    base_raw, _, deltas = self.chunk(rows)
                    yield base_raw, deltas, [torch.zeros(base_raw.shape) if d is None else d for d in deltas]
                return
            base_raw, _, deltas = held
            full = [torch.zeros(base_raw.shape) if d is None else d for d in deltas]
            step = max(1, CHUNK_ENTRIES // m)
            for a in range(0, n, step):
                yield base_raw, deltas, [d[:, a:a + step].T for d in full]

        for _, deltas, chunks in views():
            zero = [z and d is None for z, d in zip(zero, deltas)]
            acc.add(chunks)
        coefficients = self.method.gram(acc.gram, tasks, min(m, n), self.p,
                                        self.rank_bounds(zero), tall).float()
        stats.add(MergeStats(entries=m * n * tasks))
        if tall:
            for base_raw, _, chunks in views():
                yield base_raw, base_raw, acc.apply(chunks, coefficients).mul_(self.p.lam)
            return
        out, a = torch.empty(m, n), 0
        for _, _, chunks in views():  # column blocks of the merged matrix, filled in place
            piece = acc.apply(chunks, coefficients)
            out[:, a:a + piece.shape[0]] = piece.T
            a += piece.shape[0]
        base_raw = held[0]
        del held, chunks, piece
        yield base_raw, base_raw, out.mul_(self.p.lam)


@fusable
def _task_vector(raw: torch.Tensor, base_raw: torch.Tensor) -> torch.Tensor:
    return raw.float() - base_raw.float()


@fusable
def _magnitude(raw: torch.Tensor, base_raw: torch.Tensor) -> torch.Tensor:
    return (raw.float() - base_raw.float()).abs()


@fusable
def _task_arithmetic(base_raw: torch.Tensor, raws: list[torch.Tensor], weights: tuple[float, ...],
                     divide: bool, lam: float) -> torch.Tensor:
    base = base_raw.float()
    mixed = None
    for raw, w in zip(raws, weights):
        e = raw.float() - base
        if w != 1.0:
            e = e * w
        mixed = e if mixed is None else mixed + e
    if divide:
        mixed = mixed / sum(weights)
    if lam != 1.0:
        mixed = mixed * lam
    return (base + mixed).to(base_raw.dtype)


@fusable
def add_to_base(base_raw: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """base + merged change, computed in fp32 and stored in the base's dtype."""
    return (base_raw.float() + merged).to(base_raw.dtype)


@dataclass
class MergeStream:
    """The merged model of `job`, tensor by tensor in the base's order.

    `chunks()` yields (name, chunk, changed): each tensor's rows in order, in the base's dtype,
    `changed` False where the tensor is the base's own. `tensors()` joins the chunks into whole
    tensors. `parts` (the report's counters per model part, plus "unchanged") is complete once
    the iteration ends. `pgm merge` writes exactly what this yields.
    """

    job: MergeJob
    progress: Progress | None = None
    parts: dict[str, MergeStats] = field(default_factory=dict)

    def chunks(self) -> Iterator[tuple[str, torch.Tensor, bool]]:
        job = self.job
        method, params = job.method, job.params
        unchanged = MergeStats()
        safe = zero_safe(method, params)
        total = sum(math.prod(i.shape) * ITEM_BYTES[i.dtype] for i in job.base.values())
        done = 0
        self.parts.clear()
        for key, info in job.base.items():
            started = time.perf_counter()
            stats = MergeStats()
            changed = False
            if info.dtype not in FLOAT_DTYPES or not any(src.touches(key) for src in job.inputs) and safe:
                for rows in _chunk_rows(info):
                    yield key, read_rows(info.file, key, rows), False
            else:
                merge = TensorMerge(key, info, job.inputs, method, params, job.side_inputs)
                if method.name == "task_arithmetic" and all(isinstance(s, FullModel) for s in job.inputs):
                    pieces = ((base_raw, out) for base_raw, out in merge.fused_chunks(stats))
                else:
                    pieces = ((base_raw, None if merged is None else add_to_base(base_raw, merged))
                              for base_raw, _, merged in merge.merged_chunks(stats, safe))
                for base_raw, out in pieces:
                    changed = changed or out is not None
                    yield key, base_raw if out is None else out, out is not None
            stats.tensors = 1
            stats.seconds = time.perf_counter() - started
            if changed:
                self.parts.setdefault(part_of(key), MergeStats()).add(stats)
            else:
                stats.entries = math.prod(info.shape) * len(job.inputs)
                unchanged.add(stats)
            done += math.prod(info.shape) * ITEM_BYTES[info.dtype]
            if self.progress:
                self.progress(done, total, key)
        if unchanged.tensors:
            self.parts["unchanged"] = unchanged

    def tensors(self, changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, whole merged tensor) in the base's order; `changed_only` skips the tensors
        that are the base's (a model already holding the base needs only the others)."""
        name, pieces, changed = None, [], False
        for key, chunk, chunk_changed in self.chunks():
            if key != name and name is not None and (changed or not changed_only):
                yield name, _join(pieces, self.job.base[name].shape)
            if key != name:
                name, pieces, changed = key, [], False
            pieces.append(chunk)
            changed = changed or chunk_changed
        if name is not None and (changed or not changed_only):
            yield name, _join(pieces, self.job.base[name].shape)


def _join(pieces: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    return pieces[0].reshape(shape) if len(pieces) == 1 else torch.cat(pieces).reshape(shape)


def merged_state_dict(job: MergeJob, progress: Progress | None = None, changed_only: bool = False
                      ) -> tuple[dict[str, torch.Tensor], dict[str, MergeStats]]:
    """The merged model in memory, keyed by the base checkpoint's tensor names, and the report's
    counters: what `pgm merge` would write, without writing it."""
    stream = MergeStream(job, progress)
    state = dict(stream.tensors(changed_only))
    return state, stream.parts
