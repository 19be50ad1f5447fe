"""The streaming merge: check everything, then merge tensor by tensor, chunk by chunk, and write.

Memory stays bounded by one chunk's working set (CHUNK_ENTRIES entries in fp32, a few copies)
plus, for tensors whose whole-tensor statistics are needed (TIES' top-k, slerp's angle), their raw
input rows kept between the statistics pass and the merge pass when they fit CACHE_BYTES; larger
tensors (a 3B model's embedding) are read again instead. --output is claimed through
`paligemma_cli.outputs` (locked, staged, own files only): the merge is written into its staging
folder and moved into place at the end, so a failure leaves nothing behind and --overwrite replaces
only what an earlier pgm merge wrote there.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from paligemma_cli import outputs
from paligemma_cli.errors import PgmError
from paligemma_cli.merge import checks
from paligemma_cli.merge.fused import fusable
from paligemma_cli.merge.methods import (MergeParams, MergeStats, Method, TensorHints, cosine_from_sums,
                                         get_method, parse_layers, slerp_cosine)
from paligemma_cli.merge.sources import (FullModel, TensorInfo, local_folder, module_name,
                                         open_input, read_rows, safetensors_header)
from paligemma_cli.merge.sparsify import kth_largest, rows_per_block
from paligemma_cli.merge.writer import ITEM_BYTES, ShardedWriter

CHUNK_ENTRIES = 1 << 22  # rows per chunk are chosen so a chunk holds at most about this many
CACHE_BYTES = 768 * 1024**2  # raw input rows kept between a tensor's two passes, at most
SAMPLE_ENTRIES, SAMPLE_GROUPS = 1 << 18, 64  # TIES' top-k bracket: entries sampled per tensor, runs
DEFAULT_DENSITY = 0.3  # the original merge_vlm.py's default
FLOAT_DTYPES = ("F64", "F32", "BF16", "F16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
PARTS = (("model.language_model.", "language model"), ("lm_head.", "language model"),
         ("model.vision_tower.", "vision tower"), ("model.multi_modal_projector.", "projector"))
Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, tensor name)


@dataclass(frozen=True)
class MergeRequest:
    """Everything `pgm merge` was asked to do (None: the method's default)."""

    base_model: str
    models: tuple[str, ...]
    output: Path
    mode: str = "ties"
    weights: tuple[float, ...] | None = None
    density: float | None = None
    lam: float | None = None
    seed: int = 0
    normalize: bool | None = None
    layers: str | None = None
    output_format: str = "full"
    rank: int | None = None
    overwrite: bool = False
    check_base: bool = True


@dataclass
class MergeResult:
    output: Path
    method: str
    params: MergeParams
    parts: dict[str, MergeStats]  # per model part, plus "unchanged" (copied from the base)
    files: list[str]
    seconds: float
    kinds: list[str] = field(default_factory=list)  # "model" / "adapter" per input
    lowrank_errors: dict[str, float] = field(default_factory=dict)  # adapter output only
    notes: list[str] = field(default_factory=list)  # clean-ups of interrupted runs in --output


def part_of(key: str) -> str:
    name = module_name(key)
    return next((label for prefix, label in PARTS if name.startswith(prefix)), "other")


def resolve_params(req: MergeRequest) -> tuple[Method, MergeParams]:
    """Check the flags against each other; one PgmError listing every problem."""
    method = get_method(req.mode)
    n = len(req.models)
    problems = []
    if n < 2:
        problems.append(f"pgm merge needs at least two models (got {n}): pass --model twice, or "
                        "--model-a and --model-b")
    if method.two_models and n != 2:
        problems.append(f"--mode {method.name} merges exactly two models (got {n})")
    weights = tuple(req.weights) if req.weights else (1.0,) * n
    for name, values in (("--weight", weights), ("--density", [req.density]), ("--lambda", [req.lam])):
        bad = [v for v in values if v is not None and not math.isfinite(v)]
        if bad:  # nan passes every range check below, and inf/nan would be written into the model
            problems.append(f"{name} must be a finite number (got {bad[0]})")
    if req.weights and len(weights) != n:
        problems.append(f"--weight was given {len(weights)} times for {n} models: give one per model, "
                        "in --model order")
    if req.density is not None and method.sparsify is None:
        problems.append(f"--density has no effect with --mode {method.name}")
    elif req.density is not None and math.isfinite(req.density) and not 0.0 < req.density <= 1.0:
        problems.append(f"--density must be in (0, 1] (got {req.density:g})")
    if req.lam is not None and not method.takes_lambda:
        problems.append(f"--lambda has no effect with --mode {method.name}")
    if req.normalize is not None and method.name in ("slerp", "layerswap"):
        problems.append(f"--normalize/--no-normalize has no effect with --mode {method.name}")
    if (req.layers is None) == (method.name == "layerswap"):
        problems.append("--mode layerswap needs --layers (e.g. --layers 0-8=1,9-17=2)" if req.layers is None
                        else f"--layers only applies to --mode layerswap, not {method.name}")
    normalize = method.normalize if req.normalize is None else req.normalize
    if len(weights) == n and n >= 2 and abs(sum(weights)) < 1e-8 and (
            method.name in ("slerp", "layerswap") or (method.name == "linear" and normalize)):
        problems.append("the --weight values sum to 0, so the weighted average is undefined")
    if method.name == "slerp" and any(w < 0 for w in weights):
        problems.append("--mode slerp takes non-negative --weight values (t = w_b / (w_a + w_b))")
    if req.output_format not in ("full", "adapter"):
        problems.append(f"--output-format must be full or adapter (got {req.output_format!r})")
    if req.rank is not None and req.rank < 1:
        problems.append(f"--rank must be >= 1 (got {req.rank})")
    if problems:
        raise PgmError("; ".join(problems) + ".", "See `pgm merge --help`.")
    layers = parse_layers(req.layers, n) if req.layers else ()
    density = req.density if req.density is not None else (DEFAULT_DENSITY if method.sparsify else 1.0)
    return method, MergeParams(weights=weights, density=density, lam=1.0 if req.lam is None else req.lam,
                               normalize=normalize, seed=req.seed, layers=layers)


def check_output(req: MergeRequest, base_folder: Path, inputs: list) -> None:
    output = Path(req.output).expanduser()
    sources = [base_folder] + [i.folder for i in inputs]
    for folder in sources:
        if output.resolve() == folder.resolve() or output.resolve() in folder.resolve().parents:
            raise PgmError(f"--output {req.output} would replace an input ({folder}).",
                           "Write the merge to a new folder.")


def _chunk_rows(info: TensorInfo) -> list[tuple[int, int] | None]:
    """Row ranges of a tensor, multiples of DARE's random blocks; [None] = read it whole."""
    numel = math.prod(info.shape)
    if not info.shape or numel <= CHUNK_ENTRIES:
        return [None]
    block = rows_per_block(info.shape)
    row = numel // info.shape[0]
    step = max(1, CHUNK_ENTRIES // (row * block)) * block
    return [(r, min(r + step, info.shape[0])) for r in range(0, info.shape[0], step)]


class _TensorMerge:
    """Merges one tensor of the base: reads chunks, runs the statistics pass when the method
    needs one, merges, writes."""

    def __init__(self, key: str, info: TensorInfo, inputs: list, method: Method, params: MergeParams):
        self.key, self.info, self.inputs, self.method, self.p = key, info, inputs, method, params
        self.rows = _chunk_rows(info)
        raw_bytes = math.prod(info.shape) * ITEM_BYTES[info.dtype]
        n_read = 1 + sum(isinstance(i, FullModel) for i in inputs)
        self.cache: dict | None = {} if len(self.rows) > 1 and raw_bytes * n_read <= CACHE_BYTES else None
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
        chunk: the arithmetic of `combine` and `_add_to_base`, in their order, without storing
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
        hints = TensorHints(name=module_name(self.key), full_shape=self.info.shape)
        if len(self.rows) == 1:
            return hints
        if self.method.sparsify == "magnitude" and self.p.density < 1.0:
            numel = math.prod(self.info.shape)

            def magnitudes():
                for rows in self.rows:
                    _, _, mags = self.chunk(rows, magnitudes=True)
                    yield (rows[1] - rows[0]) * (numel // self.info.shape[0]), mags

            k = int(self.p.density * numel)
            hints.cutoffs = kth_largest(magnitudes, [k] * len(self.inputs), numel, self.sample())
        elif self.method.name == "slerp":
            sums = [0.0, 0.0, 0.0]
            for rows in self.rows:
                _, base, deltas = self.chunk(rows)
                v0, v1 = (base if d is None else base + d for d in deltas)
                sums = [a + b for a, b in zip(sums, slerp_cosine(v0, v1))]
            hints.cos = cosine_from_sums(*sums)
        return hints

    def merged_chunks(self, stats: MergeStats, zero_safe: bool):
        """Yield (base raw, base fp32, merged change or None where the chunk is the base's)."""
        hints = self.hints()
        for rows in self.rows:
            base_raw, base, deltas = self.chunk(rows)
            if all(d is None for d in deltas) and zero_safe:
                yield base_raw, base, None
                continue
            deltas = [torch.zeros(base.shape) if d is None else d for d in deltas]
            hints.row0 = rows[0] if rows else 0
            merged, chunk_stats = self.method(base, deltas, self.p, hints)
            stats.add(chunk_stats)
            yield base_raw, base, merged


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
def _add_to_base(base_raw: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """base + merged change, computed in fp32 and stored in the base's dtype."""
    return (base_raw.float() + merged).to(base_raw.dtype)


def merge(req: MergeRequest, progress: Progress | None = None) -> MergeResult:
    """Run a merge end to end (see the module docstring); raises PgmError on bad input."""
    method, params = resolve_params(req)
    notes = outputs.check_output(Path(req.output).expanduser(), "merge", overwrite=req.overwrite, flag="--output")
    base_folder = local_folder(req.base_model, "--base-model")
    if not (base_folder / "config.json").exists():
        hint = "It is a LoRA adapter: pass it with --model and its base with --base-model." \
            if (base_folder / "adapter_config.json").exists() else "Point it at a model folder."
        raise PgmError(f"--base-model {req.base_model} has no config.json.", hint)
    inputs = [open_input(spec, "--model") for spec in req.models]
    check_output(req, base_folder, inputs)
    base = safetensors_header(base_folder, "--base-model")
    base_config = json.loads((base_folder / "config.json").read_text())
    for src in inputs:
        if isinstance(src, FullModel):
            checks.check_full_model(src, base, base_config)
        else:
            checks.check_adapter(src, base, req.base_model, base_folder, req.check_base)
    if params.layers:
        _check_layers(params, base)
    if req.output_format == "adapter":
        from paligemma_cli.merge.lowrank import merge_to_adapter

        result = merge_to_adapter(req, method, params, inputs, base, progress)
    else:
        result = _merge_full(req, method, params, base_folder, base, inputs, progress)
    result.notes = notes + result.notes
    return result


def _check_layers(params: MergeParams, base: dict[str, TensorInfo]) -> None:
    from paligemma_cli.merge.methods import DECODER_LAYER

    found = {int(m.group(1)) for k in base if (m := DECODER_LAYER.search(k))}
    top = max(found, default=-1)
    for first, last, _ in params.layers:
        if last > top:
            raise PgmError(f"--layers {first}-{last}: the model has decoder layers 0-{top}.",
                           "Use layer indices that exist.")


def _zero_safe(method: Method, params: MergeParams) -> bool:
    """True when inputs equal to the base give the base back (all but an un-normalised linear)."""
    return not (method.name == "linear" and not params.normalize and sum(params.weights) != 1.0)


def _merge_full(req: MergeRequest, method: Method, params: MergeParams, base_folder: Path,
                base: dict[str, TensorInfo], inputs: list, progress: Progress | None) -> MergeResult:
    output = Path(req.output).expanduser()
    total = sum(math.prod(i.shape) * ITEM_BYTES[i.dtype] for i in base.values())
    parent = next(p for p in [output.parent, *output.parent.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if free < total * 1.05:
        raise PgmError(f"--output {req.output}: the merged model needs {total / 1e9:.1f} GB, "
                       f"{free / 1e9:.1f} GB are free there.", "Free some space or write elsewhere.")
    started = time.perf_counter()
    with staged(req, needed=total) as (tmp, notes):
        writer = ShardedWriter(tmp, [(k, i.shape, i.dtype) for k, i in base.items()])
        try:
            parts = _merge_tensors(method, params, base, inputs, writer, progress)
            files = writer.close()
        finally:
            writer.abort()
        _copy_side_files(base_folder, tmp)
        result = MergeResult(output, method.name, params, parts, files, time.perf_counter() - started,
                             [src.kind for src in inputs], notes=notes)
        write_recipe(tmp, req, result)
    return result


@contextmanager
def staged(req: MergeRequest, needed: int | None = None) -> Iterator[tuple[Path, list[str]]]:
    """Claim --output (`outputs.claim_output`: locked, own files only) and yield a staging folder
    whose files become --output's when the block succeeds (a failure leaves the earlier output as
    it was), with the notes of what an interrupted merge left there and was removed."""
    with outputs.claim_output(Path(req.output).expanduser(), "merge", overwrite=req.overwrite,
                              flag="--output") as out:
        out.needed = needed
        with out.staged() as tmp:
            yield tmp, out.notes


def _merge_tensors(method, params, base, inputs, writer, progress) -> dict[str, MergeStats]:
    parts: dict[str, MergeStats] = {}
    unchanged = MergeStats()
    zero_safe = _zero_safe(method, params)
    done = 0
    for key, info in base.items():
        started = time.perf_counter()
        numel = math.prod(info.shape)
        stats = MergeStats()
        changed = False
        if info.dtype not in FLOAT_DTYPES or not any(src.touches(key) for src in inputs) and zero_safe:
            for rows in _chunk_rows(info):
                writer.write(key, read_rows(info.file, key, rows))
        elif method.name == "task_arithmetic" and all(isinstance(src, FullModel) for src in inputs):
            for base_raw, out in _TensorMerge(key, info, inputs, method, params).fused_chunks(stats):
                changed = changed or out is not None
                writer.write(key, base_raw if out is None else out)
        else:
            for base_raw, _, merged in _TensorMerge(key, info, inputs, method, params).merged_chunks(
                    stats, zero_safe):
                changed = changed or merged is not None
                writer.write(key, base_raw if merged is None else _add_to_base(base_raw, merged))
        stats.tensors = 1
        stats.seconds = time.perf_counter() - started
        if changed:
            parts.setdefault(part_of(key), MergeStats()).add(stats)
        else:
            stats.entries = numel * len(inputs)
            unchanged.add(stats)
        done += numel * ITEM_BYTES[info.dtype]
        if progress:
            progress(done, writer.total_bytes, key)
    if unchanged.tensors:
        parts["unchanged"] = unchanged
    return parts


def _copy_side_files(base_folder: Path, dest: Path) -> None:
    """Config, processor, tokenizer and generation files from the base (not its weights)."""
    for path in sorted(base_folder.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and not path.name.startswith(
                ("adapter_", outputs.BOOKKEEPING)) and path.name != "model.safetensors.index.json":
            shutil.copy2(path, dest / path.name)


def write_recipe(folder: Path, req: MergeRequest, result: MergeResult) -> None:
    """pgm_merge.json: how this folder was made, so a merge can be reproduced."""
    recipe = {"base_model": req.base_model, "models": list(req.models), "mode": result.method,
              "weights": list(result.params.weights), "density": result.params.density,
              "lambda": result.params.lam, "normalize": result.params.normalize, "seed": result.params.seed,
              "layers": req.layers, "output_format": req.output_format,
              "stats": {k: vars(v) for k, v in result.parts.items()}}
    if result.lowrank_errors:
        recipe["rank"] = req.rank
        recipe["relative_error"] = result.lowrank_errors
    (folder / "pgm_merge.json").write_text(json.dumps(recipe, indent=2) + "\n")
