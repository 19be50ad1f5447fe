"""The SVD merges, TSV-M, Iso-C and Iso-CTS, on whole task matrices (issue #23's merge-methods spec).

They follow the official code (AntoAndGar/task_singular_vectors `compute_and_sum_svd_mem_reduction`,
danielm1405/iso-merging `iso.py`): a tensor is a matrix iff it is exactly 2-D and its name lacks
`text_projection`; other tensors get the plain mean of the task vectors; the result is
base + lambda x merged (the official alpha). SVDs run in float32 (as the official code and
FusionBench do; float64 inputs in float64) on `params.device`.

One addition, for LoRA inputs: where the rank of a task vector is known to be r (a LoRA module,
`hints.ranks`), singular triplets past r are treated as the zero padding the official code uses
(the spec's step 4). They are rounding noise with arbitrary directions there, which the official
code would orthogonalise into the result; full-model inputs are treated exactly as the official code.

This module serves tensors the driver holds whole (up to `tensors.SVD_DIRECT_ENTRIES`); larger
ones go through the streamed Gram-matrix form in gram.py, which computes the same thing.
"""

from __future__ import annotations

from typing import Sequence

import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge.params import MergeParams, MergeStats, TensorHints

POLAR_FLOOR = 1e-12  # eigenvalues of a^T a below this x the largest: a's null space


def is_matrix(name: str, shape: Sequence[int]) -> bool:
    """The official repos' rule for which tensors get the SVD treatment."""
    return len(shape) == 2 and "text_projection" not in name


def tsv_rank(k: int, tasks: int) -> int:
    """TSV-M's per-task share of the k singular triplets: int(k * (1/T)), as the official code
    computes it (equals k // T for T < 49)."""
    return int(k * (1 / tasks))


def iso_cts_sizes(k: int, tasks: int, fraction: float) -> tuple[int, int]:
    """(c, p): Iso-CTS's common size and per-task size, c + T p = k; p rounds half to even."""
    c0 = int(k * fraction)
    p = round((k - c0) / tasks)
    c = k - tasks * p
    if c < 0:
        raise PgmError(f"--common-fraction {fraction:g} leaves no common subspace for a matrix of rank "
                       f"{k} and {tasks} models (c = {c}).", "Use a larger --common-fraction (default 0.8).")
    return c, p


def _bound(ranks: Sequence[int | None] | None, t: int, limit: int) -> int:
    known = None if ranks is None else ranks[t]
    return limit if known is None else min(limit, known)


def _sum_bound(ranks: Sequence[int | None] | None, k: int) -> int | None:
    """An upper bound on the rank of the sum of the task vectors, when every rank is known."""
    if ranks is None or any(r is None for r in ranks):
        return None
    return min(k, sum(ranks))


def polar(a: torch.Tensor) -> torch.Tensor:
    """P Qh for a = P diag(s) Qh: the closest matrix with orthonormal columns (or rows).

    Computed as a (a^T a)^(-1/2) (or (a a^T)^(-1/2) a) with the eigendecomposition of the small
    Gram matrix in float64: the same matrix as the SVD's P Qh when a has full rank, and robust
    where LAPACK's SVD fails to converge, which it does on the nearly orthonormal matrices whose
    polar factors these methods take (all singular values close to 1)."""
    wide = a.shape[0] < a.shape[1]
    x = (a.T if wide else a).double()
    values, vectors = torch.linalg.eigh(x.T @ x)
    keep = values > POLAR_FLOOR * values.max().clamp_min(0)  # on a's range (rank-deficient: non-unique)
    kept = vectors[:, keep]
    out = (x @ (kept / values[keep].sqrt()) @ kept.T).to(a.dtype)
    return out.T if wide else out


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in a's precision, retried in float64 where LAPACK fails to converge."""
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)


def _work(deltas: Sequence[torch.Tensor], device: str) -> list[torch.Tensor]:
    dtype = torch.float64 if deltas[0].dtype == torch.float64 else torch.float32
    return [d.to(device=device, dtype=dtype) for d in deltas]


def tsv_factors(deltas: Sequence[torch.Tensor], ranks: Sequence[int | None] | None = None,
                device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """TSV-M's (U⊥, S, V⊥): each task's top int(k/T) singular triplets, concatenated in task
    order (S not re-sorted), U and V orthogonalised by their polar factors; None if none is kept."""
    work = _work(deltas, device)
    k, tasks = min(work[0].shape), len(work)
    r = tsv_rank(k, tasks)
    u, s, vh = svd(torch.stack(work))  # batched over the tasks
    keep = [_bound(ranks, t, r) for t in range(tasks)]
    if not any(keep):
        return None
    big_u = torch.cat([u[t, :, :n] for t, n in enumerate(keep)], dim=1)
    big_s = torch.cat([s[t, :n] for t, n in enumerate(keep)])
    big_v = torch.cat([vh[t, :n] for t, n in enumerate(keep)], dim=0)
    return polar(big_u), big_s, polar(big_v)


def tsv_merge(deltas: Sequence[torch.Tensor], ranks: Sequence[int | None] | None = None,
              device: str = "cpu") -> torch.Tensor:
    """TSV-M of whole task matrices: U⊥ diag(S) V⊥ (`tsv_factors`)."""
    factors = tsv_factors(deltas, ranks, device)
    if factors is None:
        return torch.zeros(deltas[0].shape)
    u, s, v = factors
    return ((u * s) @ v).float().cpu()


def iso_c_merge(deltas: Sequence[torch.Tensor], ranks: Sequence[int | None] | None = None,
                device: str = "cpu") -> torch.Tensor:
    """Iso-C: the SVD of the sum of the task vectors, every singular value set to their mean."""
    total = sum(_work(deltas, device))
    u, s, vh = svd(total)
    k = s.numel()
    bound = _sum_bound(ranks, k)
    q = k if bound is None else bound
    mean = s[:q].sum() / k  # past a known rank the official mean counts rounding noise: 0 here
    return (mean * u[:, :q] @ vh[:q]).float().cpu()


def iso_cts_merge(deltas: Sequence[torch.Tensor], fraction: float, ranks: Sequence[int | None] | None = None,
                  device: str = "cpu") -> torch.Tensor:
    """Iso-CTS: the sum's top c directions plus each task's top p directions of what the common
    ones leave (left projection), orthogonalised, with every singular value their mean."""
    work = _work(deltas, device)
    k, tasks = min(work[0].shape), len(work)
    c, p = iso_cts_sizes(k, tasks, fraction)
    u, s, vh = svd(sum(work))
    bound = _sum_bound(ranks, k)
    cc = c if bound is None else min(c, bound)
    common_u, common_s, common_v = u[:, :cc], s[:cc], vh[:cc]
    blocks_u, blocks_s, blocks_v = [], [], []
    for t, delta in enumerate(work):
        # a known-rank sum whose whole range is common leaves every task a zero residual
        pt = 0 if bound is not None and bound <= c else _bound(ranks, t, p)
        if pt == 0:
            continue
        residual = delta - common_u @ (common_u.T @ delta)
        ru, rs, rvh = svd(residual)
        blocks_u.append(ru[:, :pt])
        blocks_s.append(rs[:pt])
        blocks_v.append(rvh[:pt])
    all_s = torch.cat(blocks_s + [common_s])
    if all_s.numel() == 0:
        return torch.zeros(deltas[0].shape)
    mean = all_s.sum() / k
    merged = mean * polar(torch.cat(blocks_u + [common_u], dim=1)) @ polar(torch.cat(blocks_v + [common_v]))
    return merged.float().cpu()


def mean_change(deltas: Sequence[torch.Tensor], lam: float) -> torch.Tensor:
    """What the SVD methods do to tensors that are not matrices: lambda x the mean task vector."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total += d
    return total.mul_(lam / len(deltas))


def _method(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams, hints: TensorHints,
            merge_matrix) -> tuple[torch.Tensor, MergeStats]:
    stats = MergeStats(entries=base.numel() * len(deltas))
    if not is_matrix(hints.name, base.shape):
        return mean_change(deltas, p.lam), stats
    return merge_matrix().mul_(p.lam), stats


def tsv(base, deltas, p: MergeParams, hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """TSV-M (`pgm merge tsv`): lambda x `tsv_merge` on matrices, x the mean task vector elsewhere."""
    return _method(base, deltas, p, hints, lambda: tsv_merge(deltas, hints.ranks, p.device))


def iso_c(base, deltas, p: MergeParams, hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """Iso-C (`pgm merge iso_c`): lambda x `iso_c_merge` on matrices, x the mean elsewhere."""
    return _method(base, deltas, p, hints, lambda: iso_c_merge(deltas, hints.ranks, p.device))


def iso_cts(base, deltas, p: MergeParams, hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    """Iso-CTS (`pgm merge iso_cts`): lambda x `iso_cts_merge` on matrices, x the mean elsewhere."""
    return _method(base, deltas, p, hints,
                   lambda: iso_cts_merge(deltas, p.common_fraction, hints.ranks, p.device))
