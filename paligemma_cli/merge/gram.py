"""TSV-M, Iso-C and Iso-CTS on task matrices too large to hold: through Gram matrices, streamed.

Stack the T task matrices A_t (m x n, m >= n; a wide matrix is handled as its transpose) side by
side, Z = [A_1 ... A_T]. Every SVD the methods take is of a matrix Z E for some small E: A_t
itself, the sum D = Z [I; ...; I], the residual A_t - U_c U_c^T A_t. The right singular vectors
and values of Z E come from the eigendecomposition of E^T G E, where G = Z^T Z (T n x T n) is
accumulated over row chunks in float64; the left singular vectors are Z E V / s, never formed.
polar(Z F) = Z F (F^T G F)^(-1/2) likewise. So each method reduces to a coefficient matrix M
(T n x n, or n x n on D for Iso-C) with merged = Z M, computed from G alone, and a second pass
over the rows writes Z[rows] M. Memory: G, M and one chunk, whatever m is.

Singular values below GRAM_FLOOR x the largest (s^2 below 1e-12 x the largest eigenvalue, near
float64's resolution of a Gram matrix) count as zero: their directions cannot be recovered from
G, and the direct SVD of a float32 matrix does not resolve them either.
"""

from __future__ import annotations

from typing import Sequence

import torch

from paligemma_cli.merge.spectral import iso_cts_sizes, tsv_rank

GRAM_FLOOR = 1e-6


class GramAccumulator:
    """Z^T Z (or D^T D with `summed`), in float64, over row chunks of the T task matrices."""

    def __init__(self, tasks: int, n: int, summed: bool, device: str = "cpu"):
        self.tasks, self.n, self.summed, self.device = tasks, n, summed, device
        size = n if summed else tasks * n
        self.gram = torch.zeros(size, size, dtype=torch.float64, device=device)

    def stacked(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.summed:
            total = chunks[0].clone()
            for c in chunks[1:]:
                total += c
            return total
        return torch.cat(list(chunks), dim=1)

    def add(self, chunks: Sequence[torch.Tensor]) -> None:
        """Row chunks (rows x n, the same rows of every task matrix)."""
        z = self.stacked(chunks).to(device=self.device, dtype=torch.float64)
        if self.device == "cpu":  # numpy runs z.T @ z as one symmetric rank-k update (half the work)
            zn = z.numpy()
            self.gram += torch.from_numpy(zn.T @ zn)
        else:
            self.gram.addmm_(z.T, z)

    def apply(self, chunks: Sequence[torch.Tensor], coefficients: torch.Tensor) -> torch.Tensor:
        """Z[rows] M for the rows these chunks hold, in float32 on the CPU."""
        z = self.stacked(chunks).to(device=self.device, dtype=torch.float32)
        return (z @ coefficients).cpu()


def _spectrum(sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(singular values descending, right singular vectors) from a Gram matrix."""
    values, vectors = torch.linalg.eigh(sym)  # reads the lower triangle only
    return values.flip(0).clamp_min(0).sqrt(), vectors.flip(1)


def _count(s: torch.Tensor, limit: int, ref: float | None = None) -> int:
    """How many of the leading singular values to keep: at most `limit`, none below the floor."""
    ref = float(s[0]) if ref is None and s.numel() else (ref or 0.0)
    return min(limit, int((s > GRAM_FLOOR * ref).sum())) if ref > 0 else 0


def _inv_sqrt(sym: torch.Tensor) -> torch.Tensor:
    """sym^(-1/2) on its range (the polar factor's Gram side), for a PSD matrix."""
    roots, vectors = _spectrum(sym)  # sym = X^T X: roots are X's singular values, sym^(-1/2) = V / roots V^T
    n = _count(roots, roots.numel())
    kept = vectors[:, :n]
    return (kept / roots[:n]) @ kept.T


def _polar_rows(v: torch.Tensor) -> torch.Tensor:
    """polar(v) for an explicit q x n matrix v with q <= n: (v v^T)^(-1/2) v."""
    return _inv_sqrt(v @ v.T) @ v


def _block(gram: torch.Tensor, n: int, i: int, j: int) -> torch.Tensor:
    return gram[i * n:(i + 1) * n, j * n:(j + 1) * n]


def _combine(gram: torch.Tensor, n: int, tasks: int, blocks: list, values: torch.Tensor, rows: torch.Tensor,
             scale: float = 1.0, common: tuple | None = None) -> torch.Tensor:
    """M with Z M = scale x polar(U) diag(values) polar(V), where V's rows are `rows` and U = Z F.

    F's columns are one block per (t, B_t, Y_t) in `blocks`, equal to B_t in row block t minus
    (1 x Vs) Y_t (Y_t None: nothing), then with `common` = (Vs, K) the common block 1 x Vs, where
    Vs^T D^T D Vs = I and K[t] = Vs^T (D^T A_t). Each block has orthonormal left vectors, so U^T U
    has identity diagonal blocks; the others come from G's blocks without forming Z F."""
    widths = [b.shape[1] for _, b, _ in blocks] + ([common[0].shape[1]] if common else [])
    q = sum(widths)
    if q == 0:
        return torch.zeros(tasks * n, n, dtype=gram.dtype, device=gram.device)
    utu = torch.eye(q, dtype=gram.dtype, device=gram.device)
    starts = [sum(widths[:i]) for i in range(len(widths))]
    def put(a: int, c: int, cross: torch.Tensor) -> None:
        utu[starts[a]:starts[a] + widths[a], starts[c]:starts[c] + widths[c]] = cross
        utu[starts[c]:starts[c] + widths[c], starts[a]:starts[a] + widths[a]] = cross.T

    for a, (i, b_i, y_i) in enumerate(blocks):
        for c, (j, b_j, y_j) in enumerate(blocks[a + 1:], a + 1):
            # F_i^T G F_j = B_i^T G_ij B_j - (K_i B_i)^T Y_j - Y_i^T (K_j B_j) + Y_i^T Y_j
            cross = b_i.T @ _block(gram, n, i, j) @ b_j
            if y_j is not None:
                cross -= (common[1][i] @ b_i).T @ y_j
            if y_i is not None:
                cross -= y_i.T @ (common[1][j] @ b_j)
            if y_i is not None and y_j is not None:
                cross += y_i.T @ y_j
            put(a, c, cross)
        if common is not None:  # (1 x Vs)^T G F_i = K_i B_i - Y_i
            put(len(blocks), a, common[1][i] @ b_i - (0 if y_i is None else y_i))
    w = _inv_sqrt(utu).mul_(values)
    del utu
    x = (w @ _polar_rows(rows)).mul_(scale)  # q x n: M = F x
    del w
    m = torch.zeros(tasks * n, n, dtype=gram.dtype, device=gram.device)
    shared = x[starts[-1]:] if common is not None else None
    for a, (t, b, y) in enumerate(blocks):
        part = x[starts[a]:starts[a] + widths[a]]
        m[t * n:(t + 1) * n] += b @ part
        if y is not None:
            shared = shared - y @ part
    if common is not None:
        part = common[0] @ shared
        for t in range(tasks):
            m[t * n:(t + 1) * n] += part
    return m


def tsv_coefficients(gram: torch.Tensor, tasks: int, n: int, ranks: Sequence[int | None] | None
                     ) -> torch.Tensor:
    """M with Z M = TSV-M of the task matrices (see spectral.tsv_merge)."""
    r = tsv_rank(n, tasks)
    blocks, values, rows = [], [], []
    for t in range(tasks):
        s, v = _spectrum(_block(gram, n, t, t))
        keep = _count(s, r if ranks is None or ranks[t] is None else min(r, ranks[t]))
        blocks.append((t, v[:, :keep] / s[:keep], None))  # U_t = A_t V_t / s_t
        values.append(s[:keep])
        rows.append(v[:, :keep].T)
    return _combine(gram, n, tasks, blocks, torch.cat(values), torch.cat(rows))


def iso_c_coefficients(gram: torch.Tensor, n: int, ranks: Sequence[int | None] | None) -> torch.Tensor:
    """M with D M = Iso-C of the task matrices, from D^T D (see spectral.iso_c_merge)."""
    s, v = _spectrum(gram)
    bound = None if ranks is None or any(r is None for r in ranks) else min(n, sum(ranks))
    q = _count(s, n if bound is None else bound)
    mean = s[:q].sum() / n
    return mean * (v[:, :q] / s[:q]) @ v[:, :q].T  # mean x polar(D) = mean x D V S^-1 V^T


def iso_cts_coefficients(gram: torch.Tensor, tasks: int, n: int, fraction: float,
                         ranks: Sequence[int | None] | None, left: bool = True) -> torch.Tensor:
    """M with Z M = Iso-CTS of the task matrices (see spectral.iso_cts_merge). `left=False` is the
    same method on the transposes of wide matrices: there the common subspace is projected out
    of each residual from the right, and Z M is the transpose of the merged matrix."""
    c_size, p_size = iso_cts_sizes(n, tasks, fraction)
    columns = [sum(_block(gram, n, i, t) for i in range(tasks)) for t in range(tasks)]  # D^T A_t
    s, v = _spectrum(sum(columns))
    bound = None if ranks is None or any(r is None for r in ranks) else min(n, sum(ranks))
    cc = _count(s, c_size if bound is None else min(c_size, bound))
    vs = v[:, :cc] / s[:cc]  # U_c = D Vs
    k = [vs.T @ h for h in columns]  # U_c^T A_t
    blocks, values, rows = [], [], []
    for t in range(tasks):
        pt = 0 if bound is not None and bound <= c_size else \
            (p_size if ranks is None or ranks[t] is None else min(p_size, ranks[t]))
        if pt == 0:
            continue
        g_tt = _block(gram, n, t, t)
        if left:  # R_t = A_t - U_c (U_c^T A_t): R^T R = A^T A - K^T K
            residual = g_tt - k[t].T @ k[t]
        else:  # R_t = A_t (I - V_c V_c^T)
            proj = torch.eye(n, dtype=gram.dtype, device=gram.device) - v[:, :cc] @ v[:, :cc].T
            residual = proj @ g_tt @ proj
        q, w = _spectrum(residual)
        del residual
        pt = _count(q, pt, ref=float(g_tt.trace().clamp_min(0).sqrt()))
        b = w[:, :pt] / q[:pt]
        blocks.append((t, b, k[t] @ b) if left else (t, proj @ b, None))
        values.append(q[:pt])
        rows.append(w[:, :pt].T)
    all_s = torch.cat(values + [s[:cc]])  # isotropic: every singular value becomes their mean
    return _combine(gram, n, tasks, blocks, torch.ones_like(all_s), torch.cat(rows + [v[:, :cc].T]),
                    scale=float(all_s.sum()) / n, common=(vs, k))


# The methods' entries for the driver: (G, T, n, params, ranks, tall) -> M; see tensors.TensorMerge.
def tsv_stream(gram: torch.Tensor, tasks: int, n: int, params, ranks, tall: bool) -> torch.Tensor:
    return tsv_coefficients(gram, tasks, n, ranks)  # TSV-M commutes with transposition


def iso_c_stream(gram: torch.Tensor, tasks: int, n: int, params, ranks, tall: bool) -> torch.Tensor:
    return iso_c_coefficients(gram, n, ranks)  # so does Iso-C


def iso_cts_stream(gram: torch.Tensor, tasks: int, n: int, params, ranks, tall: bool) -> torch.Tensor:
    return iso_cts_coefficients(gram, tasks, n, params.common_fraction, ranks, left=tall)
