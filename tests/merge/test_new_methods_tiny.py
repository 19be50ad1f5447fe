"""TSV-M, Iso-C, Iso-CTS, Breadcrumbs and DELLA merges of whole tiny PaliGemmas, each checked
tensor by tensor against an independent implementation of issue #23's merge-methods spec written
here (plain torch, float64, whole tensors), with the spec's parity rule. Float32 models whose task
vectors are full rank (base + noise), as the spec asks: rank-deficient ones make SVD merges
non-unique."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paligemma_cli.merge import sparsify, tensors
from paligemma_cli.merge.driver import MergeRequest, merge
from paligemma_cli.merge.sources import module_name
from paligemma_cli.merge.sparsify import block_uniforms

EPS32 = torch.finfo(torch.float32).eps


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def polar(a):
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


def is_matrix(key, t):
    return t.dim() == 2 and "text_projection" not in key


def ref_tsv(deltas):
    k, n = min(deltas[0].shape), len(deltas)
    r = int(k * (1 / n))
    parts = [torch.linalg.svd(d, full_matrices=False) for d in deltas]
    u = torch.cat([p[0][:, :r] for p in parts], 1)
    s = torch.cat([p[1][:r] for p in parts])
    v = torch.cat([p[2][:r] for p in parts], 0)
    return polar(u) @ torch.diag(s) @ polar(v)


def ref_iso_c(deltas):
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    return s.mean() * u @ vh


def ref_iso_cts(deltas, f=0.8):
    k, n = min(deltas[0].shape), len(deltas)
    c0 = int(k * f)
    p = round((k - c0) / n)
    c = k - n * p
    u, s, vh = torch.linalg.svd(sum(deltas), full_matrices=False)
    us, ss, vs = [], [], []
    for d in deltas:
        residual = d - u[:, :c] @ u[:, :c].T @ d
        ru, rs, rv = torch.linalg.svd(residual, full_matrices=False)
        us.append(ru[:, :p])
        ss.append(rs[:p])
        vs.append(rv[:p])
    all_s = torch.cat(ss + [s[:c]])
    assert all_s.numel() == k
    return all_s.mean() * polar(torch.cat(us + [u[:, :c]], 1)) @ polar(torch.cat(vs + [vh[:c]], 0))


def ref_spectral(method, key, deltas, lam=1.0, **kw):
    if not is_matrix(key, deltas[0]):
        return lam * sum(deltas) / len(deltas)
    return lam * {"tsv": ref_tsv, "iso_c": ref_iso_c, "iso_cts": ref_iso_cts}[method](deltas, **kw)


def ref_breadcrumb_mask(d, density, gamma):
    n = d.numel()
    keep, n_top = int(density * n), int(gamma * n)
    n_bot = n - keep - n_top
    if n_bot < 0:
        n_top, n_bot = n_top + n_bot, 0
    order = torch.sort(d.abs().reshape(-1), stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[n_bot:n - n_top]] = True  # pgm: n_top = 0 keeps [n_bot, N), mergekit's [n_bot:-0] is empty
    return mask.view(d.shape)


def ref_della_scale(d, density, epsilon, seed, name, model):
    rows = d.reshape(1, -1) if d.dim() < 2 else d
    mag, n = rows.abs(), rows.shape[1]
    ranks = torch.empty_like(mag)
    order = torch.sort(mag, dim=1, stable=True).indices
    positions = torch.arange(n, dtype=mag.dtype).view(1, n, *[1] * (mag.dim() - 2))  # ranks along dim 1
    ranks.scatter_(1, order, positions.expand_as(mag).contiguous())
    probs = (density - epsilon + ranks * 2 * epsilon / (n - 1)).view(d.shape) if n > 1 else \
        torch.full(d.shape, density, dtype=d.dtype)
    draws = block_uniforms(d.shape, seed=seed, tensor=f"della|{name}", model=model).double()
    return torch.where(draws < probs, 1 / probs, 0.0)


def ref_combine(deltas, w, consensus, normalize, lam):
    """mergekit's generalized task arithmetic: weighted deltas, sign consensus ("sum"), divisor."""
    weighted = [wi * d for wi, d in zip(w, deltas)]
    if consensus:
        majority = torch.where(sum(weighted) >= 0, 1.0, -1.0)
        masks = [torch.sign(e) == majority for e in weighted]
        mixed = sum(e * m for e, m in zip(weighted, masks))
        divisor = sum(wi * m.double() for wi, m in zip(w, masks))
        divisor = torch.where(divisor == 0, 1.0, divisor)
    else:
        mixed = sum(weighted)
        divisor = sum(w) if abs(sum(w)) >= 1e-8 else 1.0
    return lam * (mixed / divisor if normalize else mixed)


def assert_parity(key, cand, ref, base):
    """The spec's rule: ||cand - ref|| <= 1e-4 ||ref|| and <= 1e-3 ||ref - B|| + eps ||ref||."""
    diff = float(torch.linalg.norm(cand.double() - ref))
    assert diff <= 1e-4 * float(torch.linalg.norm(ref)), key
    assert diff <= 1e-3 * float(torch.linalg.norm(ref - base)) + EPS32 * float(torch.linalg.norm(ref)), key


def check_all(out: Path, inputs: list[Path], reference):
    merged = weights(out)
    models = [weights(p) for p in inputs]
    base = models.pop(0)
    assert merged.keys() == base.keys()
    for key, b in base.items():
        deltas = [m[key].double() - b.double() for m in models]
        ref = b.double() + reference(key, deltas)
        assert_parity(key, merged[key], ref, b.double())


def run(p, names, out, **kw):
    return merge(MergeRequest(base_model=str(p["base"]), models=tuple(str(p[n]) for n in names), output=out, **kw))


@pytest.mark.parametrize("method, extra", [("tsv", {}), ("iso_c", {"lam": 0.7}),
                                           ("iso_cts", {}), ("iso_cts", {"common_fraction": 0.5, "lam": 1.3})])
@pytest.mark.parametrize("names", [("noisy_1", "noisy_2"), ("noisy_1", "noisy_2", "noisy_3")])
def test_svd_merges_match_the_spec(merge_inputs, tmp_path, method, extra, names):
    result = run(merge_inputs, names, tmp_path / "m", mode=method, **extra)
    assert result.params.device == "cpu" and result.parts["language model"].tensors == 21
    kw = {"f": extra["common_fraction"]} if "common_fraction" in extra else {}
    check_all(tmp_path / "m", [merge_inputs["base"]] + [merge_inputs[n] for n in names],
              lambda key, deltas: ref_spectral(method, key, deltas, extra.get("lam", 1.0), **kw))


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_svd_merges_streamed_through_gram_matrices_match_the_spec(merge_inputs, tmp_path, monkeypatch, method):
    monkeypatch.setattr(tensors, "SVD_DIRECT_ENTRIES", 1000)  # every matrix takes the streamed path
    monkeypatch.setattr(tensors, "CHUNK_ENTRIES", 2048)  # the 1792 x 64 embedding in 56 chunks,
    monkeypatch.setattr(tensors, "CACHE_BYTES", 0)  # read again for the second pass
    monkeypatch.setattr(sparsify, "RNG_BLOCK", 256)
    names = ("noisy_1", "noisy_2", "noisy_3")
    run(merge_inputs, names, tmp_path / "m", mode=method)
    check_all(tmp_path / "m", [merge_inputs["base"]] + [merge_inputs[n] for n in names],
              lambda key, deltas: ref_spectral(method, key, deltas))


@pytest.mark.parametrize("method, extra", [
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05}),
    ("breadcrumbs", {"density": 0.9, "gamma": 0.01, "weights": (0.5, 1.5), "lam": 0.5}),  # n_top 0 on norms
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.1, "normalize": True}),
    ("breadcrumbs_ties", {"density": 0.95, "gamma": 0.2}),  # n_bot < 0 clamps n_top
])
def test_breadcrumbs_merges_match_the_spec(merge_inputs, tmp_path, method, extra):
    p = merge_inputs
    run(p, ("noisy_1", "noisy_2"), tmp_path / "m", mode=method, **extra)
    w = extra.get("weights", (1.0, 1.0))

    def reference(key, deltas):
        masked = [d * ref_breadcrumb_mask(d, extra["density"], extra["gamma"]) for d in deltas]
        return ref_combine(masked, w, method == "breadcrumbs_ties", extra.get("normalize", False),
                           extra.get("lam", 1.0))
    check_all(tmp_path / "m", [p["base"], p["noisy_1"], p["noisy_2"]], reference)


@pytest.mark.parametrize("method, extra", [("della", {}), ("della_linear", {"density": 0.4, "epsilon": 0.3,
                                                                            "seed": 9, "lam": 0.5})])
def test_della_merges_match_the_spec_with_the_same_draws(merge_inputs, tmp_path, method, extra):
    # random masks cannot be compared with mergekit's; the reference computes ranks, probabilities
    # and the 1/p rescale itself and takes pgm's uniform draws (seeded per tensor, model, block)
    p = merge_inputs
    run(p, ("noisy_1", "noisy_2"), tmp_path / "m", mode=method, **extra)
    density, epsilon, seed = extra.get("density", 0.7), extra.get("epsilon", 0.1), extra.get("seed", 0)

    def reference(key, deltas):
        scaled = [d * ref_della_scale(d, density, epsilon, seed, module_name(key), i) for i, d in enumerate(deltas)]
        return ref_combine(scaled, (1.0, 1.0), method == "della", method == "della", extra.get("lam", 1.0))
    check_all(tmp_path / "m", [p["base"], p["noisy_1"], p["noisy_2"]], reference)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts", "breadcrumbs_ties", "della"])
def test_streaming_in_row_chunks_writes_identical_bytes(merge_inputs, tmp_path, monkeypatch, method):
    p = merge_inputs
    monkeypatch.setattr(sparsify, "RNG_BLOCK", 256)  # random blocks of 4 rows of 64
    run(p, ("noisy_1", "noisy_2"), tmp_path / "whole", mode=method)
    monkeypatch.setattr(tensors, "CHUNK_ENTRIES", 2048)
    monkeypatch.setattr(tensors, "CACHE_BYTES", 0)
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0)
    run(p, ("noisy_1", "noisy_2"), tmp_path / "chunked", mode=method)
    whole, chunked = weights(tmp_path / "whole"), weights(tmp_path / "chunked")
    for key in whole:
        assert torch.equal(whole[key], chunked[key]), key


def test_svd_merges_of_lora_adapters_use_their_ranks(merge_inputs, tmp_path):
    # adapter a: r 4 (q_proj 2), adapter b: r 4. Past each rank a task vector's singular values
    # are rounding noise: pgm treats them as the zero padding the official code uses.
    p = merge_inputs
    ranks = {}
    for i, name in enumerate(("adapter_a", "adapter_b")):
        for key, value in load_file(p[name] / "adapter_model.safetensors").items():
            if key.endswith("lora_A.weight"):
                ranks.setdefault(key.split("base_model.model.")[1].removesuffix(".lora_A.weight"), {})[i] = value.shape[0]
    run(p, ("adapter_a", "adapter_b"), tmp_path / "tsv", mode="tsv")
    run(p, ("adapter_a", "adapter_b"), tmp_path / "iso", mode="iso_c")
    base = weights(p["base"])
    fulls = [weights(p["full_a"]), weights(p["full_b"])]
    tsv, iso = weights(tmp_path / "tsv"), weights(tmp_path / "iso")
    checked = 0
    for key, b in base.items():
        r = ranks.get(module_name(key).removesuffix(".weight"))
        if r is None:
            assert torch.equal(tsv[key], b) and torch.equal(iso[key], b), key
            continue
        deltas = [f[key].double() - b.double() for f in fulls]  # PEFT's own B·A·scale
        svds = [torch.linalg.svd(d, full_matrices=False) for d in deltas]
        share = int(min(b.shape) * 0.5)
        keep = [min(share, r[0]), min(share, r[1])]
        u = torch.cat([s[0][:, :n] for s, n in zip(svds, keep)], 1)
        v = torch.cat([s[2][:n] for s, n in zip(svds, keep)], 0)
        sv = torch.cat([s[1][:n] for s, n in zip(svds, keep)])
        assert_parity(key, tsv[key], b.double() + polar(u) @ torch.diag(sv) @ polar(v), b.double())
        du, ds, dvh = torch.linalg.svd(sum(deltas), full_matrices=False)
        q = r[0] + r[1]
        expected = ds[:q].sum() / min(b.shape) * du[:, :q] @ dvh[:q]
        assert math.isclose(float(torch.linalg.norm(iso[key].double() - b.double() - expected)), 0.0,
                            abs_tol=1e-4 * float(torch.linalg.norm(expected)))
        checked += 1
    assert checked == 14
