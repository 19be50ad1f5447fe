"""Which task-vector entries survive: exact magnitude top-k and DARE's random drop.

TIES keeps the top `int(density * numel)` entries of |tau| per tensor. A 3B model's embedding
task vector alone is 2 GB in fp32, so the k-th largest magnitude is found without holding the
tensor: a two-pass radix select over the float32 bit patterns (for non-negative floats the bits
sort like the values), fed by chunks. Entries equal to the cut-off value are kept in flat order
until exactly k are kept, so the result is deterministic and does not depend on chunking.

DARE's masks are drawn in fixed row blocks, each from its own generator seeded by
(seed, tensor, model, block): the same seed gives the same masks however the driver chunks.
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
SMALL_TENSOR = 1 << 20  # up to this many entries, the k-th largest comes from torch.kthvalue
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
                ks: Sequence[int], numel: int) -> list[Cutoff]:
    """Per model i, the cut-off that keeps exactly the `ks[i]` largest of its magnitudes.

    `magnitudes()` yields, chunk by chunk in flat order, (entries in the chunk, one non-negative
    float32 tensor per model or None where that model's chunk is all zero). It is called twice
    (a radix select in two passes), so a caller streaming from disk reads twice; all models
    share the reads.
    """
    n = len(ks)
    cuts: list[Cutoff | None] = [Cutoff.keep_none() if k <= 0 else Cutoff.keep_all() if k >= numel
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
    hist = torch.zeros(len(ks), _HI_BINS, dtype=torch.int64)
    for size, chunk in magnitudes():
        for i in todo:
            if chunk[i] is None:
                hist[i, 0] += size
            else:
                hist[i] += torch.bincount(_hi_bins(chunk[i].reshape(-1)), minlength=_HI_BINS)
    picks = {i: _pick_bin(hist[i], ks[i]) for i in todo}
    hist_lo = torch.zeros(len(ks), _LO_BINS, dtype=torch.int64)
    for size, chunk in magnitudes():
        for i in todo:
            hi_bin = picks[i][0]
            if chunk[i] is None:
                if hi_bin == 0:
                    hist_lo[i, 0] += size
                continue
            lo = _lo_bins(chunk[i].reshape(-1), torch.tensor(hi_bin, dtype=torch.int32))
            hist_lo[i] += torch.bincount(lo, minlength=_LO_BINS + 1)[:_LO_BINS]
    for i in todo:
        hi_bin, above_bin = picks[i]
        lo_bin, above_lo = _pick_bin(hist_lo[i], ks[i] - above_bin)
        bits = torch.tensor([(hi_bin << 16) | lo_bin], dtype=torch.int32)
        cuts[i] = Cutoff(value=float(bits.view(torch.float32).item()), ties=ks[i] - above_bin - above_lo,
                         equal=int(hist_lo[i, lo_bin]))
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
    keep = mag > cut.value
    if cut.ties <= 0:
        return keep
    equal = mag == cut.value
    n_equal = int(equal.count_nonzero())
    cut.equal -= n_equal
    if n_equal <= cut.ties:
        cut.ties -= n_equal
        return keep | equal
    # The quota runs out inside this chunk: keep the first `ties` equal entries in flat order.
    rank = equal.reshape(-1).cumsum(0).view(equal.shape)
    keep |= equal & (rank <= cut.ties)
    cut.ties = 0
    return keep


def chunk_rule(delta: torch.Tensor, cut: Cutoff) -> tuple[float, float] | torch.Tensor:
    """How `cut` applies to this chunk of a task vector (consuming its equal-entry quota):
    (value, 1.0) keep > value and == value; (value, 0.0) keep > value only; or, in the one chunk
    where the quota of equal entries runs out, an explicit boolean mask."""
    if cut.ties <= 0:
        return (cut.value, 0.0)
    if cut.ties >= cut.equal:  # every remaining equal entry is kept: no need to count them
        return (cut.value, 1.0)
    n_equal = int(_count_equal(delta, torch.tensor(cut.value)))
    if n_equal <= cut.ties:
        cut.ties -= n_equal
        cut.equal -= n_equal
        return (cut.value, 1.0)
    return magnitude_keep(delta.abs(), cut)


@fusable
def _count_equal(delta: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (delta.abs() == value).sum()


def magnitude_cutoff(delta: torch.Tensor, density: float) -> Cutoff:
    """The cut-off keeping the top int(density * numel) entries of |delta| (whole tensor)."""
    mag = delta.abs().float()
    return kth_largest(lambda: [(mag.numel(), [mag])], [int(density * delta.numel())], delta.numel())[0]


def rows_per_block(shape: tuple[int, ...] | torch.Size) -> int:
    """Rows of a tensor per DARE random block (the driver chunks in multiples of this)."""
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, RNG_BLOCK // max(row, 1))


def _block_seed(seed: int, tensor: str, model: int, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{tensor}|{model}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep(shape: tuple[int, ...] | torch.Size, density: float, *, seed: int, tensor: str,
              model: int, row0: int = 0, full_shape: tuple[int, ...] | torch.Size | None = None
              ) -> torch.Tensor:
    """DARE's keep mask for rows [row0, row0 + shape[0]) of a tensor: each entry kept with
    probability `density` (dropped with 1 - density). `row0` must start a block."""
    out_shape = tuple(shape)
    full_shape = tuple(full_shape or shape)
    if len(shape) == 0:  # a scalar is one row of one entry
        shape, full_shape = (1,), (1,)
    per_block = rows_per_block(full_shape)
    if row0 % per_block:
        raise ValueError("DARE chunks must start on a random block")
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    parts = []
    for start in range(0, shape[0], per_block):
        rows = min(per_block, shape[0] - start)
        gen = torch.Generator().manual_seed(_block_seed(seed, tensor, model, (row0 + start) // per_block))
        parts.append(torch.rand(rows * row, generator=gen) < density)
    return torch.cat(parts).view(out_shape)
