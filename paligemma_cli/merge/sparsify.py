"""Which task-vector entries survive: exact magnitude top-k, DARE's random drop, Model
Breadcrumbs' magnitude window and DELLA's rank-weighted random drop.

TIES keeps the top `int(density * numel)` entries of |tau| per tensor. A 3B model's embedding
task vector alone is 2 GB in fp32, so the k-th largest magnitude is found without holding the
tensor. Given a sample of the magnitudes (the driver reads a few spread-out rows), one pass over
the chunks counts the entries above a bracket around the sample's quantile and keeps those inside
it; the k-th largest is then an exact `kthvalue` among the few kept. When the bracket misses (a
sample unlike the tensor), a two-pass radix select over the float32 bit patterns (for
non-negative floats the bits sort like the values) finds it instead. Entries equal to the cut-off
value are kept in flat order until exactly k are kept, so the result is deterministic and does
not depend on chunking or on the sample.

Breadcrumbs keeps the entries at sorted positions [n_bot, N - n_top) of a stable ascending sort
of |tau|; each edge is a `LowerSet` (the j smallest), found with the same k-th largest search.

DARE's and DELLA's masks are drawn in fixed row blocks, each from its own generator seeded by
(seed, tensor, model, block): the same seed gives the same masks however the driver chunks.
DELLA ranks magnitudes within each row (dim 1, as mergekit), so row chunks are independent.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from paligemma_cli.merge.fused import fusable

_HI_BINS = 1 << 15  # bits 30..16 of a non-negative float32: exponent + top 7 mantissa bits
_LO_BINS = 1 << 16  # bits 15..0
SMALL_TENSOR = 1 << 22  # up to this many entries, the k-th largest comes from torch.kthvalue
BRACKET_SIGMAS = 6.0  # half-width of the sample bracket in binomial standard deviations of a rank
RNG_BLOCK = 1 << 20  # DARE draws its randomness in blocks of about this many entries


@dataclass
class Cutoff:
    """Keep entries whose magnitude is > `value`, plus the first `ties` entries equal to it.

    `ties` is consumed as chunks are masked in order (`magnitude_keep`), which is how a
    tensor split into row chunks keeps exactly the same entries as the whole tensor.
    """

    value: float
    ties: int = 0
    equal: int = 0  # entries equal to `value` not yet masked (whole tensor at the start)
    chunk_equal: list[int] | None = None  # per chunk, in order: entries equal to `value` (if known)

    @classmethod
    def keep_all(cls) -> "Cutoff":
        return cls(value=-1.0)

    @classmethod
    def keep_none(cls) -> "Cutoff":
        return cls(value=math.inf)


def _pick_bin(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest entry, and how many entries lie in higher bins."""
    from_top = hist.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor([k], dtype=from_top.dtype)).item())
    b = hist.numel() - 1 - j
    return b, int(from_top[j].item()) - int(hist[b].item())


def kth_largest(magnitudes: Callable[[], Iterable[tuple[int, Sequence[torch.Tensor | None]]]],
                ks: Sequence[int], numel: int, sample: Sequence[torch.Tensor | None] | None = None
                ) -> list[Cutoff]:
    """Per model i, the cut-off that keeps exactly the `ks[i]` largest of its magnitudes.

    `magnitudes()` yields, chunk by chunk in flat order, (entries in the chunk, one non-negative
    float32 tensor per model or None where that model's chunk is all zero). With a `sample` of
    each model's magnitudes it is usually called once (the bracket pass); otherwise, or where a
    bracket misses, twice more (the radix select), so a caller streaming from disk reads again.
    All models share the reads.
    """
    n = len(ks)
    cuts: list[Cutoff | None] = [Cutoff.keep_none() if k <= 0 else Cutoff.keep_all() if k > numel
                                 else None for k in ks]
    todo = [i for i in range(n) if cuts[i] is None]
    if not todo:
        return cuts
    if numel <= SMALL_TENSOR:  # one quickselect beats 100k histogram bins on small tensors
        chunks = list(magnitudes())
        for i in todo:
            mag = torch.cat([torch.zeros(size) if c[i] is None else c[i].reshape(-1) for size, c in chunks])
            value = float(torch.kthvalue(mag, numel - ks[i] + 1).values)
            cuts[i] = Cutoff(value=value, ties=ks[i] - int((mag > value).count_nonzero()),
                             equal=int((mag == value).count_nonzero()))
        return cuts
    if sample is not None:
        for i, cut in _bracket_select(magnitudes, {i: ks[i] for i in todo}, numel, sample).items():
            cuts[i] = cut
        todo = [i for i in todo if cuts[i] is None]
    if todo:
        for i, cut in _radix_select(magnitudes, {i: ks[i] for i in todo}).items():
            cuts[i] = cut
    return cuts


def _bracket(sample: torch.Tensor, k: int, numel: int) -> tuple[float, float]:
    """(lo, hi): sample values that hold the k-th largest of `numel` magnitudes between them with
    overwhelming probability when the sample is drawn like the tensor (a miss only costs time)."""
    m = sample.numel()
    p = k / numel
    rank = p * m  # the k-th largest of the tensor sits near this rank (from the top) of the sample
    half = BRACKET_SIGMAS * math.sqrt(m * p * (1 - p)) + 8
    top, bottom = math.floor(rank - half), math.ceil(rank + half)
    ordered = sample.sort(descending=True).values
    hi = math.inf if top < 1 else float(ordered[top - 1])
    lo = 0.0 if bottom > m else float(ordered[bottom - 1])
    return lo, hi


def _bracket_select(magnitudes, ks: dict[int, int], numel: int,
                    sample: Sequence[torch.Tensor | None]) -> dict[int, Cutoff]:
    """One pass: per model, count the entries above the bracket and keep those inside it (per
    chunk, so the merge pass knows how many entries equal to the cut-off each chunk holds)."""
    brackets = {i: _bracket(sample[i].reshape(-1).float(), k, numel) for i, k in ks.items()
                if sample[i] is not None and sample[i].numel() > 0}
    above = dict.fromkeys(brackets, 0)
    inside: dict[int, list[torch.Tensor]] = {i: [] for i in brackets}
    zeros = dict.fromkeys(brackets, 0)  # entries of all-zero chunks (None), inside when lo == 0
    for size, chunk in magnitudes():
        for i, (lo, hi) in brackets.items():
            if chunk[i] is None:
                zeros[i] += size
                inside[i].append(torch.zeros(0))
                continue
            mag = chunk[i].reshape(-1)
            n_above, within = _bracket_pass(mag, torch.tensor(lo), torch.tensor(hi))
            above[i] += int(n_above)
            inside[i].append(mag[within])
    cuts = {}
    for i, (lo, hi) in brackets.items():
        kept = torch.cat(inside[i])
        need = ks[i] - above[i]  # the k-th largest is the need-th largest inside the bracket
        if not 1 <= need <= kept.numel() or (lo <= 0.0 and zeros[i]):
            continue  # the bracket missed (or all-zero chunks sit inside it): radix select
        value = float(torch.kthvalue(kept, kept.numel() - need + 1).values)
        chunk_equal = [int((c == value).count_nonzero()) for c in inside[i]]
        cuts[i] = Cutoff(value=value, ties=ks[i] - above[i] - int((kept > value).count_nonzero()),
                         equal=sum(chunk_equal), chunk_equal=chunk_equal)
    return cuts


@fusable
def _bracket_pass(mag: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many magnitudes lie above `hi`, and which lie in [lo, hi] (one sweep when compiled)."""
    return (mag > hi).sum(), (mag >= lo) & (mag <= hi)


def _radix_select(magnitudes, ks: dict[int, int]) -> dict[int, Cutoff]:
    """Two passes of histograms over the float32 bit patterns: bits 30..16, then 15..0."""
    todo = list(ks)
    hist = {i: torch.zeros(_HI_BINS, dtype=torch.int64) for i in todo}
    for size, chunk in magnitudes():
        for i in todo:
            if chunk[i] is None:
                hist[i][0] += size
            else:
                hist[i] += torch.bincount(_hi_bins(chunk[i].reshape(-1)), minlength=_HI_BINS)
    picks = {i: _pick_bin(hist[i], ks[i]) for i in todo}
    hist_lo = {i: torch.zeros(_LO_BINS, dtype=torch.int64) for i in todo}
    for size, chunk in magnitudes():
        for i in todo:
            hi_bin = picks[i][0]
            if chunk[i] is None:
                if hi_bin == 0:
                    hist_lo[i][0] += size
                continue
            lo = _lo_bins(chunk[i].reshape(-1), torch.tensor(hi_bin, dtype=torch.int32))
            hist_lo[i] += torch.bincount(lo, minlength=_LO_BINS + 1)[:_LO_BINS]
    cuts = {}
    for i in todo:
        hi_bin, above_bin = picks[i]
        lo_bin, above_lo = _pick_bin(hist_lo[i], ks[i] - above_bin)
        bits = torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32)
        cuts[i] = Cutoff(value=float(bits.view(torch.float32).item()), ties=ks[i] - above_bin - above_lo,
                         equal=int(hist_lo[i][lo_bin]))
    return cuts


@fusable
def _hi_bins(mag: torch.Tensor) -> torch.Tensor:
    """Bits 30..16 of non-negative float32 magnitudes: exponent and the top mantissa bits."""
    return mag.view(torch.int32) >> 16


@fusable
def _lo_bins(mag: torch.Tensor, hi_bin: torch.Tensor) -> torch.Tensor:
    """Bits 15..0 of the magnitudes in bin `hi_bin`; the others go to an overflow bin."""
    bits = mag.view(torch.int32)
    return torch.where((bits >> 16) == hi_bin, bits & 0xFFFF, _LO_BINS)


def magnitude_keep(mag: torch.Tensor, cut: Cutoff) -> torch.Tensor:
    """Boolean mask of the entries `cut` keeps in this chunk (consumes `cut.ties`)."""
    if cut.chunk_equal:
        cut.chunk_equal.pop(0)  # counted below; keep the per-chunk counts in step
    keep = mag > cut.value
    if cut.ties <= 0:
        return keep
    return _keep_first_equal(keep, mag == cut.value, cut)


def _keep_first_equal(keep: torch.Tensor, equal: torch.Tensor, cut: Cutoff) -> torch.Tensor:
    """`keep` plus the entries of `equal` still within the quota `cut.ties`, in flat order."""
    n_equal = int(equal.count_nonzero())
    cut.equal -= n_equal
    if n_equal <= cut.ties:
        cut.ties -= n_equal
        return keep | equal
    # The quota runs out inside this chunk: keep the first `ties` equal entries in flat order.
    keep = keep.contiguous()
    keep.view(-1)[equal.reshape(-1).nonzero()[:cut.ties, 0]] = True
    cut.ties = 0
    return keep


def chunk_rule(delta: torch.Tensor, cut: Cutoff) -> tuple[float, float] | torch.Tensor:
    """How `cut` applies to this chunk of a task vector (consuming its equal-entry quota):
    (value, 1.0) keep > value and == value; (value, 0.0) keep > value only; or, in the one chunk
    where the quota of equal entries runs out, an explicit boolean mask."""
    n_equal = cut.chunk_equal.pop(0) if cut.chunk_equal else None
    if cut.ties <= 0:
        return (cut.value, 0.0)
    if cut.ties >= cut.equal:  # every remaining equal entry is kept: no need to count them
        return (cut.value, 1.0)
    if n_equal is None:
        n_equal = int(_count_equal(delta, torch.tensor(cut.value)))
    if n_equal <= cut.ties:
        cut.ties -= n_equal
        cut.equal -= n_equal
        return (cut.value, 1.0)
    mag = delta.abs()
    return _keep_first_equal(mag > cut.value, mag == cut.value, cut)


@fusable
def _count_equal(delta: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (delta.abs() == value).sum()


def magnitude_cutoff(delta: torch.Tensor, density: float) -> Cutoff:
    """The cut-off keeping the top int(density * numel) entries of |delta| (whole tensor)."""
    k = int(density * delta.numel())
    if k >= delta.numel():
        return Cutoff.keep_all()
    mag = delta.abs().float()
    return kth_largest(lambda: [(mag.numel(), [mag])], [k], delta.numel())[0]


def rows_per_block(shape: tuple[int, ...] | torch.Size) -> int:
    """Rows of a tensor per DARE random block (the driver chunks in multiples of this)."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, RNG_BLOCK // max(row, 1))


def _block_seed(seed: int, tensor: str, model: int, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{tensor}|{model}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def block_uniforms(shape: tuple[int, ...] | torch.Size, *, seed: int, tensor: str, model: int,
                   row0: int = 0, full_shape: tuple[int, ...] | torch.Size | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws for rows [row0, row0 + shape[0]) of a tensor, from one generator per
    random block seeded by (seed, tensor, model, block). `row0` must start a block."""
    out_shape = tuple(shape)
    full_shape = tuple(full_shape or shape)
    if len(shape) == 0:  # a scalar is one row of one entry
        shape, full_shape = (1,), (1,)
    per_block = rows_per_block(full_shape)
    if row0 % per_block:
        raise ValueError("random masks are drawn in chunks that start on a random block")
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    parts = []
    for start in range(0, shape[0], per_block):
        rows = min(per_block, shape[0] - start)
        gen = torch.Generator().manual_seed(_block_seed(seed, tensor, model, (row0 + start) // per_block))
        parts.append(torch.rand(rows * row, generator=gen))
    return torch.cat(parts).view(out_shape)


def dare_keep(shape: tuple[int, ...] | torch.Size, density: float, *, seed: int, tensor: str,
              model: int, row0: int = 0, full_shape: tuple[int, ...] | torch.Size | None = None
              ) -> torch.Tensor:
    """DARE's keep mask for rows [row0, row0 + shape[0]) of a tensor: each entry kept with
    probability `density` (dropped with 1 - density). `row0` must start a block."""
    return block_uniforms(shape, seed=seed, tensor=tensor, model=model, row0=row0, full_shape=full_shape) < density


def magprune_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probability per entry: density - epsilon for the smallest |tau| of its row,
    rising linearly with the magnitude rank to density + epsilon for the largest (mergekit's
    `della_magprune`: ranks along dim 1, a 0-D/1-D tensor is one row; equal magnitudes are ranked
    by index, a stable sort). A row of one entry gets `density` (mergekit divides 0 by 0 there)."""
    mag = delta.abs().reshape(1, -1) if delta.dim() < 2 else delta.abs()
    n = mag.shape[1]
    if n < 2:
        return torch.full(delta.shape, float(density))
    ranks = torch.argsort(torch.argsort(mag, dim=1, stable=True), dim=1).to(torch.float32)
    return ((density - epsilon) + ranks * (2 * epsilon / (n - 1))).view(delta.shape)


def magprune_scale(delta: torch.Tensor, density: float, epsilon: float, *, seed: int, tensor: str,
                   model: int, row0: int = 0, full_shape: tuple[int, ...] | torch.Size | None = None
                   ) -> torch.Tensor:
    """DELLA's MAGPRUNE as a factor per entry: 1/p where the entry is kept (with probability p,
    `magprune_probabilities`), 0 where it is dropped, so the expectation of the result is tau."""
    probs = magprune_probabilities(delta, density, epsilon)
    draws = block_uniforms(delta.shape, seed=seed, tensor=f"della|{tensor}", model=model, row0=row0,
                           full_shape=full_shape)
    return torch.where(draws < probs, 1.0 / probs, 0.0)


def breadcrumb_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(n_bot, n_top): how many of the smallest and of the largest |tau| Breadcrumbs drops
    (mergekit's `magnitude_outliers`): keep = int(density N), n_top = int(gamma N),
    n_bot = N - keep - n_top, and where that is negative n_top shrinks by it and n_bot is 0."""
    keep = int(density * numel)
    n_top = int(gamma * numel)
    n_bot = numel - keep - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    return n_bot, n_top


@dataclass
class LowerSet:
    """The j smallest |tau| of a tensor under a stable ascending sort: every entry below `value`,
    plus the first `first` entries equal to it in flat order (consumed as chunks are masked in
    order, like `Cutoff.ties`)."""

    value: float
    first: int = 0

    @classmethod
    def from_cutoff(cls, j: int, numel: int, cut: Cutoff) -> "LowerSet":
        """The j smallest, from the cut-off that keeps the k = numel - j + 1 largest (the j-th
        smallest is the k-th largest)."""
        if j <= 0:
            return cls(value=0.0)  # magnitudes are >= 0: nothing is below 0
        if j >= numel:
            return cls(value=math.inf)
        above = (numel - j + 1) - cut.ties  # entries greater than cut.value
        below = numel - above - cut.equal
        return cls(value=cut.value, first=j - below)

    def mask(self, mag: torch.Tensor) -> torch.Tensor:
        below = mag < self.value
        if self.first <= 0:
            return below
        equal = mag == self.value
        n_equal = int(equal.count_nonzero())
        if n_equal <= self.first:
            self.first -= n_equal
            return below | equal
        below = below.contiguous()  # the quota runs out in this chunk: the first `first` in flat order
        below.view(-1)[equal.reshape(-1).nonzero()[:self.first, 0]] = True
        self.first = 0
        return below


def window_sets(magnitudes, numel: int, n_models: int, density: float, gamma: float,
                sample: Sequence[torch.Tensor | None] | None = None) -> list[tuple[LowerSet, LowerSet]]:
    """Per model, Breadcrumbs' (bottom, top) LowerSets: the window kept is top minus bottom, the
    sorted positions [n_bot, N - n_top). `magnitudes` and `sample` are as for `kth_largest`."""
    n_bot, n_top = breadcrumb_counts(numel, density, gamma)
    edges = (n_bot, numel - n_top)
    ks = [numel - j + 1 for j in edges for _ in range(n_models)]
    doubled = None if sample is None else list(sample) * 2
    cuts = kth_largest(lambda: ((size, list(mags) * 2) for size, mags in magnitudes()), ks, numel, doubled)
    sets = [LowerSet.from_cutoff(j, numel, cuts[e * n_models + i]) for e, j in enumerate(edges)
            for i in range(n_models)]
    return [(sets[i], sets[n_models + i]) for i in range(n_models)]


def breadcrumb_windows(delta: torch.Tensor, density: float, gamma: float) -> tuple[LowerSet, LowerSet]:
    """Breadcrumbs' (bottom, top) for one whole task vector."""
    mag = delta.abs().float()
    return window_sets(lambda: [(mag.numel(), [mag])], delta.numel(), 1, density, gamma)[0]
