"""Exact magnitude top-k (sampled bracket, radix select), streamed in chunks, against sorting."""

from __future__ import annotations

import pytest
import torch

from paligemma_cli.merge import sparsify
from paligemma_cli.merge.sparsify import Cutoff, kth_largest, magnitude_cutoff, magnitude_keep


def reference_keep(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Top k by a stable descending sort: equal magnitudes are taken in flat order."""
    order = torch.sort(mag.reshape(-1), descending=True, stable=True).indices[:k]
    keep = torch.zeros(mag.numel(), dtype=torch.bool)
    keep[order] = True
    return keep.view(mag.shape)


@pytest.mark.parametrize("small", [True, False])  # kthvalue path and radix (histogram) path
def test_streamed_selection_matches_a_stable_sort(monkeypatch, small):
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 1 << 20 if small else 0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        n = int(torch.randint(1, 500, (1,), generator=gen))
        # few distinct values (as bf16 differences have): many ties at the cut
        mag = (torch.randint(0, 9, (n,), generator=gen).float() * 0.125).abs()
        k = int(torch.randint(0, n + 1, (1,), generator=gen))
        chunks = list(mag.split(97))
        cut = kth_largest(lambda: [(c.numel(), [c]) for c in chunks], [k], n)[0]
        got = torch.cat([magnitude_keep(c, cut) for c in chunks])
        assert torch.equal(got, reference_keep(mag, k))


@pytest.mark.parametrize("representative", [True, False])  # bracket hit, and a miss (radix fallback)
def test_sampled_bracket_selection_matches_a_stable_sort(monkeypatch, representative):
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(25):
        n = int(torch.randint(50, 3000, (1,), generator=gen))
        mag = torch.randint(0, 40, (n,), generator=gen).float() * 0.125  # ties at the cut
        k = int(torch.randint(1, n, (1,), generator=gen))
        chunks = list(mag.split(97))
        sample = mag[::7] if representative else torch.full((10_000,), 1000.0)  # above every entry
        cut = kth_largest(lambda: [(c.numel(), [c]) for c in chunks], [k], n, [sample])[0]
        assert (cut.chunk_equal is not None) == representative
        got = torch.cat([magnitude_keep(c, cut) for c in chunks])
        assert torch.equal(got, reference_keep(mag, k))


def test_wide_range_of_magnitudes_on_the_histogram_path(monkeypatch):
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0)
    mag = torch.randn(10_000, generator=torch.Generator().manual_seed(1)).abs() * torch.logspace(-8, 3, 10_000)
    for k in (1, 17, 5_000, 9_999):
        cut = kth_largest(lambda: [(mag.numel(), [mag])], [k], mag.numel())[0]
        assert torch.equal(magnitude_keep(mag, cut), reference_keep(mag, k))


def test_all_zero_chunks_may_be_passed_as_none(monkeypatch):
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0)
    mag = torch.tensor([0.0, 0, 0, 0, 3, 1, 0, 2])
    k = 5  # the three non-zeros and the first two zeros
    chunks = [(4, [None]), (4, [mag[4:]])]
    cut = kth_largest(lambda: chunks, [k], 8)[0]
    got = torch.cat([magnitude_keep(torch.zeros(4), cut), magnitude_keep(mag[4:], cut)])
    assert got.tolist() == [True, True, False, False, True, True, False, True]


def test_edge_densities():
    delta = torch.tensor([1.0, -2, 3])
    assert magnitude_cutoff(delta, 1.0).value == Cutoff.keep_all().value
    assert magnitude_keep(delta.abs(), magnitude_cutoff(delta, 0.2)).sum() == 0  # int(0.6) = 0
    assert magnitude_keep(delta.abs(), magnitude_cutoff(delta, 0.34)).tolist() == [False, False, True]
