"""RegMean (Jin et al., ICLR 2023), as FusionBench's `regmean` computes it.

For a linear layer y = W x of every expert t, with G_t = sum over its calibration inputs of x x^T
(in x in, from calibrate.py): shrink the off-diagonal, G~_t = a G_t + (1 - a) diag(G_t), and take

    W* = (sum_t W_t G~_t) (sum_t G~_t)^-1

the minimiser of sum_t ||W X_t - W_t X_t||^2 (a = 1). With W_t = W_base + tau_t the base cancels:
tau* = (sum_t tau_t G~_t) S^-1, S = sum_t G~_t, so the method works on task vectors (row chunks of
them: a row of W* needs only that row of each tau_t) like every other method. S is factored once
per tensor (Cholesky, float64; LU where S is not positive definite) and solved, never inverted.
A tensor without Gram matrices (norms, embeddings, convolutions, biases) gets the plain mean of
the experts, base + (1/T) sum_t tau_t.
"""

from __future__ import annotations

from typing import Sequence

import torch

from paligemma_cli.merge.params import MergeParams, MergeStats, TensorHints


class RegMeanGrams:
    """One tensor's side input: each expert's Gram matrix of the layer's inputs (None: that expert
    was not calibrated on this layer), shrunk and factored once for all row chunks of the tensor.

    The shrunk Grams stay float32 (the products with the task vectors' rows accumulate in float32,
    as the Grams themselves); S = sum_t G~_t is summed, factored and solved in float64. Held per
    tensor: T float32 Grams, S and its factor in float64 (a 3B down_proj, two experts: 2 x 1 GB + 2 x 2 GB
    while factoring, then 2 x 1 GB + 2 GB)."""

    def __init__(self, grams: Sequence[torch.Tensor | None], alpha: float):
        self.grams, self.alpha = list(grams), alpha
        self._shrunk: list[torch.Tensor] | None = None
        self._factor: tuple[str, torch.Tensor, torch.Tensor | None] | None = None
        self.incomplete = any(g is None for g in self.grams)  # then the tensor gets the plain mean

    def shrunk(self, i: int) -> torch.Tensor:
        if self._shrunk is None:
            self._shrunk = []
            while self.grams:  # each raw Gram is dropped once shrunk: T + 1 Grams held at most, not 2T
                g = self.grams.pop(0).to(torch.float32)
                if self.alpha != 1.0:
                    diagonal = torch.diagonal(g).clone()
                    g = g * self.alpha
                    torch.diagonal(g).copy_(diagonal)  # a*G + (1-a)*diag(G): the diagonal is kept whole
                self._shrunk.append(g)
        return self._shrunk[i]

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """X with X S = rhs (rows of rhs), S = sum_t G~_t; S is symmetric, so S X^T = rhs^T."""
        if self._factor is None:
            self.shrunk(0)
            total = self._shrunk[0].to(torch.float64, copy=True)
            for g in self._shrunk[1:]:
                total.add_(g)  # in place: one float64 matrix, not one per expert
            chol, info = torch.linalg.cholesky_ex(total)
            self._factor = ("chol", chol, None) if int(info) == 0 else ("lu", *torch.linalg.lu_factor(total))
            del total
        kind, a, b = self._factor
        rhs = rhs.to(torch.float64)
        if kind == "chol":
            return torch.cholesky_solve(rhs.T, a).T
        return torch.linalg.lu_solve(a, b, rhs.T).T


def regmean(base: torch.Tensor, deltas: Sequence[torch.Tensor], p: MergeParams,
            hints: TensorHints) -> tuple[torch.Tensor, MergeStats]:
    side, stats = hints.side, MergeStats(entries=sum(d.numel() for d in deltas))
    if side is None or side.incomplete or base.dim() != 2:
        return sum(deltas) / len(deltas), stats  # the experts' plain mean
    rhs = sum(d.to(torch.float32) @ side.shrunk(i) for i, d in enumerate(deltas))
    return side.solve(rhs).to(base.dtype), stats
