"""Merge methods over task vectors tau_i = theta_i - theta_base, one tensor (or row chunk) at a time.

Every method returns the merged *change* to the base weight (the driver adds the base and casts
to the base dtype), plus counters for the report. The task-vector family (task_arithmetic, ties,
dare_*, magnitude_prune, breadcrumbs*, della*) is one generalised function with different
arguments, as in mergekit and the TIES / DARE papers; linear, slerp and layerswap are small
functions of their own, and the SVD methods (tsv, iso_c, iso_cts) live in spectral.py.

Differences from PEFT's `add_weighted_adapter`: PEFT trims / drops / elects signs on the LoRA
factors A and B separately, so its "ties" is not TIES on the weight change B·A·scale. Here every
method works on the full task vector of each weight (for an adapter, B·A·alpha/r).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge import gram, spectral
from paligemma_cli.merge.catalog import METHOD_INFO, MethodInfo
from paligemma_cli.merge.fused import fusable
from paligemma_cli.merge.regmean import regmean
from paligemma_cli.merge.params import MergeParams, MergeStats, TensorHints
from paligemma_cli.merge.sparsify import (breadcrumb_windows, chunk_rule, dare_keep, magnitude_cutoff,
                                          magprune_scale)

__all__ = ["METHODS", "Method", "MergeParams", "MergeStats", "TensorHints", "combine", "get_method",
           "layer_source", "parse_layers"]

# Decoder layers of the Gemma language model, in checkpoint (language_model.model.layers.N) and
# in transformers 5 module (model.language_model.layers.N) spelling. SigLIP layers do not match.
DECODER_LAYER = re.compile(r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\.")
SLERP_COLINEAR = 0.9995  # above this |cos| the arc is numerically a line: interpolate linearly


def combine(deltas: Sequence[torch.Tensor], weights: Sequence[float],
            keep: Sequence[torch.Tensor] | None = None, *, cuts: torch.Tensor | None = None,
            scale: float = 1.0, consensus: bool = False, normalize: bool = False, lam: float = 1.0
            ) -> tuple[torch.Tensor, MergeStats]:
    """Generalised task arithmetic, the core of ties / dare_* / magnitude_prune / task_arithmetic.

    1. sparsify: tau_i <- tau_i * keep_i * scale (scale = 1/density rescales DARE's survivors);
       keep_i is given (a boolean mask, or a float factor per entry: DELLA's 0 or 1/p), or comes
       from `cuts[i] = (value, keep_equal)`: |tau_i| > value, plus |tau_i| == value when
       keep_equal is set
    2. weight:   e_i = w_i * tau_i
    3. consensus: elect the sign of sum_i e_i per entry (zero counts as +) and keep only the e_i
       with that sign (zeros never agree: trimmed entries take no part in the mean)
    4. sum; `normalize` divides by the sum of the weights that took part (per entry under
       consensus: the disjoint mean), a zero divisor counting as 1
    5. times lambda
    """
    mixed, trimmed, conflicts = _combine(list(deltas), tuple(float(w) for w in weights),
                                         None if keep is None else list(keep), cuts, float(scale),
                                         bool(consensus), bool(normalize), float(lam))
    stats = MergeStats(entries=sum(d.numel() for d in deltas), trimmed=int(trimmed), conflicts=int(conflicts))
    return mixed, stats


@fusable
def _combine(deltas: list[torch.Tensor], weights: tuple[float, ...], keep: list[torch.Tensor] | None,
             cuts: torch.Tensor | None, scale: float, consensus: bool, normalize: bool, lam: float):
    """`combine` as plain tensor code (no Python branch on values), so it can run compiled."""
    trimmed = torch.zeros((), dtype=torch.int64)
    weighted = []
    for i, (delta, w) in enumerate(zip(deltas, weights)):
        e = delta
        if keep is not None or cuts is not None:
            if keep is not None:
                kept = keep[i]
            else:
                mag = delta.abs()
                kept = (mag > cuts[i, 0]) | ((mag == cuts[i, 0]) & (cuts[i, 1] > 0))
            e = delta * kept if kept.dtype.is_floating_point else torch.where(kept, delta, 0.0)
            trimmed = trimmed + (delta != 0).sum() - (e != 0).sum()
        if w * scale != 1.0:
            e = e * (w * scale)
        weighted.append(e)
    conflicts = torch.zeros((), dtype=torch.int64)
    if not consensus:
        mixed = weighted[0]
        for e in weighted[1:]:
            mixed = mixed + e
        total = sum(weights)
        if normalize and abs(total) > 1e-8:
            mixed = mixed / total
    else:
        total = weighted[0]
        for e in weighted[1:]:
            total = total + e
        elected = torch.where(total >= 0, 1.0, -1.0)
        mixed = torch.zeros_like(elected)
        divisor = torch.zeros_like(elected)
        lowest = None
        for e, w in zip(weighted, weights):
            agreement = e * elected  # > 0: same sign as elected; < 0: a conflict; 0: not kept
            agrees = agreement > 0
            mixed = mixed + torch.where(agrees, e, 0.0)
            divisor = divisor + torch.where(agrees, w, 0.0)
            lowest = agreement if lowest is None else torch.minimum(lowest, agreement)
        conflicts = (lowest < 0).sum()
        if normalize:
            mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
    if lam != 1.0:
        mixed = mixed * lam
    return mixed, trimmed, conflicts


def task_vector_family(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams,
                       hints: TensorHints, *, sparsify: str | None, consensus: bool
                       ) -> tuple[torch.Tensor, MergeStats]:
    """ties / dare_* / magnitude_prune / task_arithmetic / breadcrumbs* / della*: sparsify each
    task vector (top-k by magnitude, DARE's random drop, Breadcrumbs' window, DELLA's
    rank-weighted drop), then `combine`."""
    keep, cuts, scale = None, None, 1.0
    if sparsify == "magnitude" and p.density < 1.0:
        cutoffs = hints.cutoffs or [magnitude_cutoff(d, p.density) for d in deltas]
        rules = [chunk_rule(d, c) for d, c in zip(deltas, cutoffs)]
        if all(isinstance(r, tuple) for r in rules):  # the usual case: a threshold per model
            cuts = torch.tensor(rules, dtype=torch.float32)
        else:  # the cut-off's equal entries run out inside this chunk: explicit masks
            keep = [r if isinstance(r, torch.Tensor) else _rule_mask(d, r) for d, r in zip(deltas, rules)]
    elif sparsify == "random" and p.density < 1.0:
        keep = [dare_keep(d.shape, p.density, seed=p.seed, tensor=hints.name, model=i,
                          row0=hints.row0, full_shape=hints.full_shape) for i, d in enumerate(deltas)]
        scale = 1.0 / p.density
    elif sparsify == "breadcrumbs" and p.density < 1.0:
        windows = hints.windows or [breadcrumb_windows(d, p.density, p.gamma) for d in deltas]
        keep = []
        for d, (bottom, top) in zip(deltas, windows):
            mag = d.abs()
            keep.append(top.mask(mag) & ~bottom.mask(mag))  # sorted positions [n_bot, N - n_top)
    elif sparsify == "magprune" and p.density < 1.0:
        keep = [magprune_scale(d, p.density, p.epsilon, seed=p.seed, tensor=hints.name, model=i,
                               row0=hints.row0, full_shape=hints.full_shape) for i, d in enumerate(deltas)]
    return combine(deltas, p.weights, keep, cuts=cuts, scale=scale, consensus=consensus,
                   normalize=p.normalize, lam=p.lam)


def _rule_mask(delta: torch.Tensor, rule: tuple[float, float]) -> torch.Tensor:
    mag = delta.abs()
    return (mag > rule[0]) | ((mag == rule[0]) if rule[1] else torch.zeros_like(mag, dtype=torch.bool))


def linear(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams,
           hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """Weighted average of the full weights, sum_i w_i theta_i / sum_i w_i (or the plain
    weighted sum with --no-normalize), returned as the change to the base."""
    mixed, stats = combine(deltas, p.weights, normalize=p.normalize)
    total = float(sum(p.weights))
    if not p.normalize and total != 1.0:  # sum w_i (base + tau_i) - base
        mixed = mixed + (total - 1.0) * base
    return mixed, stats


def slerp_cosine(v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float, float]:
    """(v0·v1, |v0|², |v1|²) in float64, summed over a chunk (the driver adds chunks up)."""
    return (float(torch.sum(v0 * v1, dtype=torch.float64)), float(torch.sum(v0 * v0, dtype=torch.float64)),
            float(torch.sum(v1 * v1, dtype=torch.float64)))


def cosine_from_sums(dot: float, n0: float, n1: float) -> float:
    return dot / math.sqrt(n0 * n1) if n0 > 0 and n1 > 0 else 1.0


def slerp(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams,
          hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """Spherical interpolation of two full weights, t = w_b / (w_a + w_b), the angle taken over
    the whole tensor (as mergekit does); nearly parallel tensors are interpolated linearly."""
    t = p.weights[1] / (p.weights[0] + p.weights[1])
    v0, v1 = base + deltas[0], base + deltas[1]
    cos = hints.cos if hints.cos is not None else cosine_from_sums(*slerp_cosine(v0, v1))
    if abs(cos) > SLERP_COLINEAR:
        a, b = 1.0 - t, t
    else:
        omega = math.acos(max(-1.0, min(1.0, cos)))
        a, b = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    # a·v0 + b·v1 - base, written on the task vectors so small changes keep their precision
    merged = a * deltas[0] + b * deltas[1]
    if a + b != 1.0:
        merged = merged + (a + b - 1.0) * base
    return merged, MergeStats(entries=2 * base.numel())


def layer_source(name: str, layers: Sequence[tuple[int, int, int]]) -> int | None:
    """For layerswap: the model index a tensor's decoder layer is taken from (-1 = the base), or
    None when the tensor is not in a listed decoder layer."""
    match = DECODER_LAYER.search(name)
    if not match:
        return None
    index = int(match.group(1))
    for first, last, model in layers:
        if first <= index <= last:
            return model
    return None


def layerswap(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams,
              hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """Whole decoder layers from one model (per `--layers` ranges); every other tensor is the
    weighted average of the models, as the original merge_vlm.py's layerswap mode did."""
    source = layer_source(hints.name, p.layers)
    if source is None:
        return linear(base, deltas, MergeParams(weights=p.weights, normalize=True), hints)
    if source < 0:
        return torch.zeros_like(base), MergeStats(entries=base.numel())
    return deltas[source], MergeStats(entries=base.numel())


MethodFn = Callable[[torch.Tensor, Sequence[torch.Tensor], MergeParams, TensorHints],
                    tuple[torch.Tensor, MergeStats]]


@dataclass(frozen=True)
class Method(MethodInfo):
    """A merge method: its catalog entry (name, help, flags) and its function."""

    fn: MethodFn | None = field(default=None, repr=False)
    # SVD methods: (Gram matrix, tasks, n, params, rank bounds, tall) -> coefficients M with
    # merged = Z M, for matrices too large to hold (gram.py)
    gram: Callable | None = field(default=None, repr=False)

    def __call__(self, base, deltas, params, hints: TensorHints | None = None):
        return self.fn(base, deltas, params, hints or TensorHints())


def _family(info: MethodInfo) -> MethodFn:
    def fn(base, deltas, p, hints):
        return task_vector_family(base, deltas, p, hints, sparsify=info.sparsify, consensus=info.consensus)
    return fn


_FUNCTIONS: dict[str, MethodFn] = {"linear": linear, "layerswap": layerswap, "slerp": slerp,
                                   "tsv": spectral.tsv, "iso_c": spectral.iso_c, "iso_cts": spectral.iso_cts,
                                   "regmean": regmean}
_STREAMED = {"tsv": gram.tsv_stream, "iso_c": gram.iso_c_stream, "iso_cts": gram.iso_cts_stream}
METHODS: dict[str, Method] = {name: Method(**vars(info), fn=_FUNCTIONS.get(name) or _family(info),
                                           gram=_STREAMED.get(name)) for name, info in METHOD_INFO.items()}


def get_method(name: str) -> Method:
    """The method called `name`, or a PgmError listing the supported ones."""
    if name not in METHODS:
        raise PgmError(f"--mode {name!r} is not a merge method.",
                       f"Supported: {', '.join(METHODS)}.")
    return METHODS[name]


def parse_layers(spec: str, n_models: int) -> tuple[tuple[int, int, int], ...]:
    """'0-8=1,9-17=2' -> ((0, 8, 0), (9, 17, 1)): decoder layer ranges (inclusive) and the
    1-based model (in --model order) each comes from; 'base' takes the base model's layer."""
    ranges = []
    for part in (x.strip() for x in spec.split(",") if x.strip()):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?=(\d+|base)", part)
        if not match:
            raise PgmError(f"--layers: cannot read {part!r}.",
                           "Write ranges as FIRST-LAST=MODEL, e.g. --layers 0-8=1,9-17=2 "
                           "(MODEL is 1.. in --model order, or 'base').")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        model = -1 if match.group(3) == "base" else int(match.group(3)) - 1
        if first > last or model >= n_models or model < -1:
            raise PgmError(f"--layers: {part!r} is out of range.",
                           f"Layers go low-high; models are 1..{n_models} or 'base'.")
        for a, b, _ in ranges:
            if first <= b and a <= last:
                raise PgmError(f"--layers: {part!r} overlaps another range.", "Give each layer once.")
        ranges.append((first, last, model))
    if not ranges:
        raise PgmError("--layers is empty.", "Example: --layers 0-8=1,9-17=2.")
    return tuple(ranges)
