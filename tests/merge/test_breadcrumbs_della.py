"""Model Breadcrumbs' magnitude window and DELLA's rank-weighted drop (mergekit's
`magnitude_outliers` and `della_magprune`, issue #23's merge-methods spec), by hand and by their
invariants."""

from __future__ import annotations

import pytest
import torch

from paligemma_cli.merge import sparsify
from paligemma_cli.merge.methods import METHODS, MergeParams, TensorHints
from paligemma_cli.merge.sparsify import (block_uniforms, breadcrumb_counts, breadcrumb_windows,
                                          magprune_probabilities, magprune_scale, window_sets)

T = torch.tensor


def run(mode, deltas, weights=None, **kw):
    kw.setdefault("normalize", METHODS[mode].normalize)
    weights = weights or (1.0,) * len(deltas)
    return METHODS[mode](torch.zeros_like(deltas[0]), deltas, MergeParams(weights=tuple(weights), **kw),
                         TensorHints(name="t"))


def window(delta, density, gamma):
    bottom, top = breadcrumb_windows(delta, density, gamma)
    mag = delta.abs()
    return top.mask(mag) & ~bottom.mask(mag)


@pytest.mark.parametrize("numel, density, gamma, counts", [
    (10, 0.5, 0.1, (4, 1)),  # keep 5, n_top 1, n_bot 10 - 5 - 1 = 4
    (10, 0.95, 0.1, (0, 1)),  # keep int(9.5) = 9, n_top 1, n_bot 0
    (10, 0.95, 0.2, (0, 1)),  # keep 9, n_top 2, n_bot -1 < 0: n_top 2 - 1 = 1, n_bot 0
    (10, 0.5, 0.05, (5, 0)),  # n_top = int(0.5) = 0
    (1000, 0.9, 0.01, (90, 10)),
])
def test_breadcrumb_counts_follow_mergekit(numel, density, gamma, counts):
    assert breadcrumb_counts(numel, density, gamma) == counts


def test_breadcrumbs_keeps_the_middle_of_the_sorted_magnitudes():
    tau = T([3.0, -10, 1, 7, -5, 2, 9, -4, 8, 6])  # magnitudes 1..10, shuffled
    kept = window(tau, 0.5, 0.1)  # sorted positions [4, 9): magnitudes 5, 6, 7, 8, 9
    assert sorted(tau[kept].abs().tolist()) == [5.0, 6.0, 7.0, 8.0, 9.0]
    kept = window(tau, 0.95, 0.2)  # n_bot clamped to 0, n_top 1: magnitudes 1..9
    assert sorted(tau[kept].abs().tolist()) == [float(v) for v in range(1, 10)]


def test_breadcrumbs_with_no_top_entries_keeps_the_top_where_mergekit_drops_everything():
    # gamma 0.05 of 10 entries: n_top = int(0.5) = 0. mergekit slices [n_bot:-0] = [5:0], an empty
    # window, and zeroes the whole task vector; pgm keeps [n_bot, N) = the 5 largest
    tau = T([3.0, -10, 1, 7, -5, 2, 9, -4, 8, 6])
    assert sorted(tau[window(tau, 0.5, 0.05)].abs().tolist()) == [6.0, 7.0, 8.0, 9.0, 10.0]
    assert sorted(tau[window(tau, 0.5, 0.0)].abs().tolist()) == [6.0, 7.0, 8.0, 9.0, 10.0]


def test_breadcrumbs_breaks_ties_by_flat_index_as_a_stable_ascending_sort():
    # |tau| = 2, 2, 2, 2, 1; N 5, density .4, gamma .2: keep 2, n_top 1, n_bot 2. Stable ascending
    # order: 1 (index 4), 2 (0), 2 (1), 2 (2), 2 (3): positions [2, 4) are indices 1 and 2
    assert window(T([2.0, -2, 2, -2, 1]), 0.4, 0.2).tolist() == [False, True, True, False, False]


def test_breadcrumbs_keeps_exactly_int_density_n_entries_and_streams_in_chunks(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        n = int(torch.randint(5, 400, (1,), generator=gen))
        tau = torch.randint(-6, 7, (n,), generator=gen).float() * 0.25  # many ties, some zeros
        density, gamma = float(torch.rand(1, generator=gen)) * 0.99 + 0.005, float(torch.rand(1, generator=gen)) * 0.2
        kept = window(tau, density, gamma)
        assert int(kept.sum()) == int(density * n), (n, density, gamma)
        # the streamed form (several chunks, radix select) keeps the same entries
        monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0 if trial % 2 else 1 << 20)
        chunks = list(tau.abs().split(37))
        bottom, top = window_sets(lambda: [(c.numel(), [c]) for c in chunks], n, 1, density, gamma)[0]
        streamed = torch.cat([top.mask(c) & ~bottom.mask(c) for c in chunks])
        assert torch.equal(streamed, kept)


def test_breadcrumbs_and_breadcrumbs_ties_combine_as_mergekit():
    # density 0.5, gamma 0.25 of 4 entries: keep 2, n_top 1, n_bot 1 -> the 2nd and 3rd largest
    tau_1, tau_2 = T([4.0, -1, 2, -3]), T([-1.0, 3, -4, 2])  # kept: [0, 0, 2, -3], [0, 3, 0, 2]
    merged, stats = run("breadcrumbs", [tau_1, tau_2], density=0.5, gamma=0.25)
    assert merged.tolist() == [0.0, 3.0, 2.0, -1.0] and stats.trimmed == 4
    # signs: sums [0, 3, 2, -1] -> +, +, +, -: entry 3 keeps only -3; normalize off: a sum
    merged, stats = run("breadcrumbs_ties", [tau_1, tau_2], density=0.5, gamma=0.25)
    assert merged.tolist() == [0.0, 3.0, 2.0, -3.0] and stats.conflicts == 1
    merged, _ = run("breadcrumbs_ties", [tau_1, tau_2], (1.0, 3.0), density=0.5, gamma=0.25, normalize=True,
                    lam=2.0)  # w (1, 3): e = [0,0,2,-3], [0,9,0,6]; sums +,+,+,+: entry 3 keeps 6 / 3
    assert merged.tolist() == [0.0, 6.0, 4.0, 4.0]
    assert run("breadcrumbs", [tau_1, tau_2], density=1.0, gamma=0.25)[0].tolist() == [3.0, 2.0, -2.0, -1.0]


def test_della_probabilities_rise_with_the_rank_in_each_row():
    # row [0.5, -3, 1, 2]: ascending ranks 0, 3, 1, 2 of 4 -> p = .6 - .1 + rank x .2 / 3
    probs = magprune_probabilities(T([[0.5, -3, 1, 2], [4.0, 4, 0, 1]]), 0.6, 0.1)
    expected = [[0.5, 0.7, 0.5 + 0.2 / 3, 0.5 + 0.4 / 3],
                [0.5 + 0.4 / 3, 0.7, 0.5, 0.5 + 0.2 / 3]]  # a tie: the lower index ranks lower
    assert torch.allclose(probs, T(expected))
    assert magprune_probabilities(T([3.0, 1, 2]), 0.5, 0.1).tolist() == pytest.approx([0.6, 0.4, 0.5])
    assert magprune_probabilities(T([[7.0], [1.0]]), 0.5, 0.1).tolist() == [[0.5], [0.5]]  # rows of one


def test_della_rescaled_expectation_is_tau_and_the_kept_fraction_is_density():
    gen = torch.Generator().manual_seed(0)
    tau = torch.randn(64, 256, generator=gen)
    scales = torch.stack([magprune_scale(tau, 0.4, 0.2, seed=s, tensor="w", model=0) for s in range(400)])
    assert abs(float((scales > 0).float().mean()) - 0.4) < 0.005  # mean keep probability = density
    mean = (scales * tau).mean(0)  # E[keep / p x tau] = tau; the standard error per entry is < 0.13 |tau|
    assert float((mean - tau).abs().div(tau.abs() + 1e-3).median()) < 0.1
    assert abs(float((mean - tau).sum() / tau.abs().sum())) < 0.01


def test_della_is_deterministic_under_a_seed_and_independent_of_chunking():
    gen = torch.Generator().manual_seed(4)
    deltas = [torch.randn(96, 8, generator=gen) for _ in range(2)]
    a, _ = run("della", deltas, density=0.7, seed=3)
    assert torch.equal(a, run("della", deltas, density=0.7, seed=3)[0])
    assert not torch.equal(a, run("della", deltas, density=0.7, seed=4)[0])
    whole = magprune_scale(deltas[0], 0.7, 0.1, seed=1, tensor="w", model=0)
    shape = (96, 8)
    step = sparsify.rows_per_block(shape)
    parts = [magprune_scale(deltas[0][r:r + step], 0.7, 0.1, seed=1, tensor="w", model=0, row0=r, full_shape=shape)
             for r in range(0, 96, step)]
    assert torch.equal(torch.cat(parts), whole)
    # DELLA draws its own stream: not DARE's masks at the same seed
    assert not torch.equal(block_uniforms(shape, seed=1, tensor="della|w", model=0),
                           block_uniforms(shape, seed=1, tensor="w", model=0))


def test_della_linear_sums_the_rescaled_survivors_and_della_elects_signs():
    tau = [torch.full((2, 500), 0.5), torch.full((2, 500), -0.25)]
    merged, stats = run("della_linear", tau, density=0.5, epsilon=0.0, seed=2)  # p = 0.5 everywhere
    assert set(merged.unique().tolist()) <= {0.0, 1.0, -0.5, 0.5}  # 0.5/0.5, -0.25/0.5, their sum
    assert stats.trimmed == int((tau[0] != 0).sum() + (tau[1] != 0).sum()) - int(
        (magprune_scale(tau[0], 0.5, 0.0, seed=2, tensor="t", model=0) > 0).sum()
        + (magprune_scale(tau[1], 0.5, 0.0, seed=2, tensor="t", model=1) > 0).sum())
    merged, _ = run("della", tau, density=0.5, epsilon=0.0, seed=2)  # disjoint mean of the agreeing
    assert set(merged.unique().tolist()) <= {0.0, 1.0, -0.5}
