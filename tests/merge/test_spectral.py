"""TSV-M, Iso-C and Iso-CTS (issue #23's merge-methods spec) on small hand-made matrices, their
invariants, and the streamed Gram-matrix form (gram.py) against the direct SVDs (spectral.py)."""

from __future__ import annotations

import math

import pytest
import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge import gram, spectral
from paligemma_cli.merge.methods import METHODS, MergeParams, TensorHints

T = torch.tensor


@pytest.mark.parametrize("k, tasks, r", [(64, 2, 32), (64, 3, 21), (7, 2, 3), (2, 3, 0), (48, 48, 1),
                                         (49, 49, 0)])
def test_tsv_rank_share_is_the_official_int_of_k_times_one_over_t(k, tasks, r):
    # k = T = 49: 49 * (1/49) = 0.99999999999999989 in double precision -> 0, where k // T is 1
    assert spectral.tsv_rank(k, tasks) == r


@pytest.mark.parametrize("k, tasks, fraction, sizes", [
    (64, 3, 0.8, (52, 4)),  # the spec's example: c0 = 51, p = round(4.33) = 4, c = 64 - 12 = 52
    (10, 2, 0.5, (6, 2)),  # c0 = 5, p = round(2.5) = 2 (half to even), c = 6
    (14, 2, 0.5, (6, 4)),  # c0 = 7, p = round(3.5) = 4 (half to even), c = 6
    (4, 2, 0.5, (2, 1)),
    (2, 2, 0.5, (2, 0)),  # c0 = 1, p = round(0.5) = 0: everything common
])
def test_iso_cts_sizes_round_half_to_even_and_fill_k(k, tasks, fraction, sizes):
    c, p = spectral.iso_cts_sizes(k, tasks, fraction)
    assert (c, p) == sizes and c + tasks * p == k


def test_iso_cts_refuses_a_negative_common_size():
    with pytest.raises(PgmError, match="--common-fraction"):
        spectral.iso_cts_sizes(2, 3, 0.1)  # c0 = 0, p = round(2/3) = 1, c = 2 - 3 = -1


def test_tsv_keeps_each_tasks_top_triplets_and_orthogonalises_u():
    # k = 2, T = 2: r = 1 triplet each. tau_1 = 2 e1 e1^T; tau_2 = 1 u2 e2^T, u2 = (e1 + e2)/sqrt 2.
    # U = [e1, u2] = [[1, a], [0, a]], a = 1/sqrt 2; V = [e1; e2] = I, S = (2, 1).
    # polar of a 2x2 matrix with det > 0 is the rotation by atan2(m21 - m12, m11 + m22)
    # = atan2(-a, 1 + a) = -22.5 degrees (tan 22.5 = sqrt 2 - 1 = a / (1 + a)).
    a = 1 / math.sqrt(2)
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    merged = spectral.tsv_merge([T([[2.0, 0], [0, 0]]), T([[0.0, a], [0, a]])])
    expected = T([[c, s], [-s, c]]) @ torch.diag(T([2.0, 1.0]))  # U⊥ diag(S) V⊥, V⊥ = I
    assert torch.allclose(merged, expected, atol=1e-6)


def test_tsv_on_orthogonal_tasks_is_their_sum():
    # each task's top triplet is already orthogonal to the other's: diag(3, 1) + diag(0, 2) ->
    # top of task 1 (3 on e1), top of task 2 (2 on e2): diag(3, 2); task 1's 1 is cut
    merged = spectral.tsv_merge([T([[3.0, 0], [0, 1]]), T([[0.0, 0], [0, 2]])])
    assert torch.allclose(merged, T([[3.0, 0], [0, 2]]), atol=1e-6)


def test_iso_c_replaces_every_singular_value_by_their_mean():
    # D = diag(3, 0) + diag(0, 1) = diag(3, 1): mean 2 -> 2 I
    deltas = [T([[3.0, 0], [0, 0]]), T([[0.0, 0], [0, 1]])]
    assert torch.allclose(spectral.iso_c_merge(deltas), 2 * torch.eye(2), atol=1e-6)
    merged, _ = METHODS["iso_c"](torch.zeros(2, 2), deltas, MergeParams(weights=(1.0, 1.0), lam=0.5),
                                 TensorHints(name="w"))
    assert torch.allclose(merged, torch.eye(2), atol=1e-6)  # x lambda


def test_iso_cts_mean_mixes_the_residual_values_with_the_common_ones():
    # k = 4, T = 2, f = 0.5: c = 2, p = 1. D = diag(4, 3, 1.5, 2): common e1 (4), e2 (3).
    # Residuals: tau_1 - common part = diag(0, 0, 1, 0) -> e3 with 1; tau_2's = diag(0, 0, .5, 2)
    # -> e4 with 2. All four directions are orthonormal; mean of (1, 2, 4, 3) = 2.5 -> 2.5 I.
    # (Iso-C would give the mean of D's spectrum, (4 + 3 + 2 + 1.5) / 4 = 2.625.)
    deltas = [torch.diag(T([4.0, 0, 1, 0])), torch.diag(T([0.0, 3, 0.5, 2]))]
    assert torch.allclose(spectral.iso_cts_merge(deltas, 0.5), 2.5 * torch.eye(4), atol=1e-6)
    assert torch.allclose(spectral.iso_c_merge(deltas), 2.625 * torch.eye(4), atol=1e-6)


def randoms(shape, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("shape, tasks", [((24, 10), 2), ((10, 24), 3), ((16, 16), 4)])
def test_invariants_orthonormal_tsv_factors_and_isotropic_spectra(shape, tasks):
    deltas = randoms(shape, tasks)
    u, s, v = spectral.tsv_factors(deltas)
    k = min(shape)
    q = tasks * spectral.tsv_rank(k, tasks)
    assert u.shape == (shape[0], q) and s.shape == (q,) and v.shape == (q, shape[1])
    assert torch.allclose(u.T @ u, torch.eye(q), atol=1e-5)
    assert torch.allclose(v @ v.T, torch.eye(q), atol=1e-5)
    for merged in (spectral.iso_c_merge(deltas), spectral.iso_cts_merge(deltas, 0.8)):
        values = torch.linalg.svdvals(merged)
        assert values.numel() == k and torch.allclose(values, values.mean().expand(k), rtol=1e-5)


def test_non_matrices_get_the_mean_task_vector_and_the_name_rule_holds():
    deltas = [T([1.0, 2, 3]), T([3.0, 0, -3])]
    p = MergeParams(weights=(1.0, 1.0), lam=2.0)
    for name in ("tsv", "iso_c", "iso_cts"):
        merged, _ = METHODS[name](torch.zeros(3), deltas, p, TensorHints(name="norm.weight"))
        assert merged.tolist() == [4.0, 2.0, 0.0], name  # 2 x mean
    matrices = randoms((6, 4), 2)
    merged, _ = METHODS["iso_c"](torch.zeros(6, 4), matrices, p, TensorHints(name="text_projection.weight"))
    assert torch.allclose(merged, matrices[0] + matrices[1])  # 2 x mean: not a "matrix" by name
    assert spectral.is_matrix("a.weight", (6, 4)) and not spectral.is_matrix("a.weight", (6, 4, 1))


def test_known_lora_ranks_drop_the_noise_triplets_as_zero_padding():
    # two rank-1 task vectors of a 6 x 6 matrix: TSV's share is int(6/2) = 3 triplets each, but
    # only one of each is real; with the ranks known the others are padding, so TSV is the polar
    # factors of the two real triplets, and Iso-C's mean counts only the two real values.
    gen = torch.Generator().manual_seed(3)
    vecs = [torch.randn(6, generator=gen) for _ in range(4)]
    deltas = [torch.outer(vecs[0], vecs[1]), torch.outer(vecs[2], vecs[3])]
    u, s, v = spectral.tsv_factors(deltas, ranks=(1, 1))
    assert s.numel() == 2
    one = [torch.linalg.svd(d) for d in deltas]
    big_u = torch.stack([one[0][0][:, 0], one[1][0][:, 0]], dim=1)
    big_v = torch.stack([one[0][2][0], one[1][2][0]])
    expected = (spectral.polar(big_u) * torch.stack([one[0][1][0], one[1][1][0]])) @ spectral.polar(big_v)
    assert torch.allclose(spectral.tsv_merge(deltas, ranks=(1, 1)), expected, atol=1e-5)
    d_u, d_s, d_vh = torch.linalg.svd(deltas[0] + deltas[1])
    expected = d_s[:2].sum() / 6 * d_u[:, :2] @ d_vh[:2]
    assert torch.allclose(spectral.iso_c_merge(deltas, ranks=(1, 1)), expected, atol=1e-5)
    # rank bound 0 (an input that leaves the tensor as it is) contributes nothing to TSV
    alone = spectral.tsv_merge([deltas[0], torch.zeros(6, 6)], ranks=(1, 0))
    assert torch.allclose(alone, deltas[0], atol=1e-5)


def streamed(name, deltas, chunk_rows=5, ranks=None, fraction=0.8):
    """The gram.py form, fed in row chunks (of the transposes when the matrices are wide)."""
    m, n = deltas[0].shape
    tall = m >= n
    views = deltas if tall else [d.T for d in deltas]
    k, tasks = min(m, n), len(deltas)
    acc = gram.GramAccumulator(tasks, k, name == "iso_c")
    rows = range(0, views[0].shape[0], chunk_rows)
    for r in rows:
        acc.add([v[r:r + chunk_rows] for v in views])
    p = MergeParams(weights=(1.0,) * tasks, common_fraction=fraction)
    coefficients = METHODS[name].gram(acc.gram, tasks, k, p, ranks, tall).float()
    out = torch.cat([acc.apply([v[r:r + chunk_rows] for v in views], coefficients) for r in rows])
    return out if tall else out.T


@pytest.mark.parametrize("shape, tasks", [((37, 23), 2), ((23, 37), 3), ((40, 12), 5), ((16, 16), 2)])
@pytest.mark.parametrize("name", ["tsv", "iso_c", "iso_cts"])
def test_streamed_gram_form_equals_the_direct_svds(name, shape, tasks):
    # float64 SVDs as the yardstick: the float32 ones, like the official code's, are off by up to
    # ~7e-5 here where the stacked singular vectors are ill-conditioned (within the spec's 1e-4)
    deltas = randoms(shape, tasks, seed=len(name))
    p = MergeParams(weights=(1.0,) * tasks)
    direct, _ = METHODS[name](torch.zeros(shape), [d.double() for d in deltas], p, TensorHints(name="w"))
    direct32, _ = METHODS[name](torch.zeros(shape), deltas, p, TensorHints(name="w"))
    out = streamed(name, deltas).double()
    assert torch.linalg.norm(out - direct) <= 1e-6 * torch.linalg.norm(direct)
    assert torch.linalg.norm(direct32 - direct) <= 1e-4 * torch.linalg.norm(direct)


def test_streamed_gram_form_follows_known_ranks_too():
    gen = torch.Generator().manual_seed(5)
    deltas = [torch.randn(30, 2, generator=gen) @ torch.randn(2, 12, generator=gen) for _ in range(2)]
    for name in ("tsv", "iso_c", "iso_cts"):
        direct, _ = METHODS[name](torch.zeros(30, 12), deltas, MergeParams(weights=(1.0, 1.0)),
                                  TensorHints(name="w", ranks=(2, 2)))
        out = streamed(name, deltas, ranks=(2, 2))
        assert torch.linalg.norm(out - direct) <= 1e-4 * torch.linalg.norm(direct), name
