"""Each merge method on small hand-made tensors, against numbers worked out by hand.

Conventions (TIES paper, mergekit): tau_i are task vectors; trimming keeps the top
int(density * numel) |tau_i| per tensor; the elected sign is the sign of sum_i w_i tau_i with 0
counting as +; the disjoint mean divides by the weights of the entries that agree with it.
"""

from __future__ import annotations

import math

import pytest
import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge.methods import (METHODS, MergeParams, TensorHints, combine, get_method, layer_source,
                                         parse_layers)

T = torch.tensor


def run(mode, deltas, weights=(1.0, 1.0), base=None, **kw):
    """Method `mode` on a whole tensor, --normalize defaulting per method as on the CLI."""
    base = torch.zeros_like(deltas[0]) if base is None else base
    kw.setdefault("normalize", METHODS[mode].normalize)
    return METHODS[mode](base, deltas, MergeParams(weights=tuple(weights), **kw), TensorHints(name="t"))


def test_ties_sign_election_with_a_tie_counts_zero_as_positive():
    # entry 0: 2 + (-2) = 0, a tie -> elected +, only model 1 agrees -> 2 / 1
    # entry 1: -1 + -3 -> -, both agree -> (-1 - 3) / 2 = -2
    # entry 2: 3 + 1 -> +, both -> 2;  entry 3: 0.5 + 0.5 -> 0.5
    merged, stats = run("ties", [T([2.0, -1, 3, 0.5]), T([-2.0, -3, 1, 0.5])], density=1.0)
    assert merged.tolist() == [2.0, -2.0, 2.0, 0.5]
    assert stats.conflicts == 1 and stats.trimmed == 0


def test_ties_trims_then_takes_the_disjoint_mean():
    # density 0.5 of 4 entries keeps k = 2 per model:
    #   tau_1 = [4, -1, 0.5, -3] -> [4, 0, 0, -3];  tau_2 = [-1, 2, -0.5, -2] -> [0, 2, 0, -2]
    # sum [4, 2, 0, -5]: entry 0 only model 1 takes part (a trimmed 0 never agrees) -> 4;
    # entry 1 -> 2; entry 2: nobody -> 0 (divisor 0 counts as 1); entry 3: (-3 - 2) / 2 = -2.5
    merged, stats = run("ties", [T([4.0, -1, 0.5, -3]), T([-1.0, 2, -0.5, -2])], density=0.5)
    assert merged.tolist() == [4.0, 2.0, 0.0, -2.5]
    assert stats.trimmed == 4 and stats.conflicts == 0


def test_ties_weights_enter_the_election_and_the_mean():
    # w = (3, 1): e_1 = [3, -3], e_2 = [-2, -4]; sums [1, -7] -> +, -
    # entry 0: only e_1 agrees -> 3 / 3 = 1;  entry 1: (-3 - 4) / (3 + 1) = -1.75
    deltas = [T([1.0, -1]), T([-2.0, -4])]
    assert run("ties", deltas, (3, 1), density=1.0)[0].tolist() == [1.0, -1.75]
    assert run("ties", deltas, (3, 1), density=1.0, lam=2.0)[0].tolist() == [2.0, -3.5]
    assert run("ties", deltas, (3, 1), density=1.0, normalize=False)[0].tolist() == [3.0, -7.0]


def test_ties_on_three_models():
    # entry 0: 1 + 1 - 3 = -1 -> -, only model 3 -> -3;  entry 1: 1 + 2 + 3 -> mean 2
    merged, stats = run("ties", [T([1.0, 1]), T([1.0, 2]), T([-3.0, 3])], (1, 1, 1), density=1.0)
    assert merged.tolist() == [-3.0, 2.0]
    assert stats.conflicts == 1


def test_equal_magnitudes_at_the_cut_keep_the_first_in_flat_order():
    # k = int(0.4 * 5) = 2 of five magnitudes 1, 1, 1, 1, 0.5: the first two ones survive
    merged, _ = run("magnitude_prune", [T([1.0, -1, 1, -1, 0.5]), torch.zeros(5)], density=0.4)
    assert merged.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("density, kept", [(1.0, 10), (0.3, 3), (0.55, 5), (0.05, 0), (1e-9, 0)])
def test_density_keeps_int_density_times_numel(density, kept):
    tau = torch.arange(1.0, 11.0)  # distinct magnitudes 1..10: the top `kept` are 10, 9, ...
    merged, stats = run("magnitude_prune", [tau, torch.zeros(10)], density=density)
    assert merged.tolist() == [v if v > 10 - kept else 0.0 for v in tau.tolist()]
    assert stats.trimmed == 10 - kept  # counts non-zero entries zeroed: none in the zero vector


def test_density_uses_plain_int_truncation():
    # 0.29 * 100 = 28.999999999999996 in floating point: int() gives 28, as mergekit does
    merged, _ = run("magnitude_prune", [torch.arange(1.0, 101.0), torch.zeros(100)], density=0.29)
    assert int(merged.count_nonzero()) == 28


def test_dare_rescales_survivors_by_one_over_density():
    tau = torch.full((1000,), 0.5)
    merged, stats = run("dare_linear", [tau, torch.zeros(1000)], density=0.25, seed=3)
    survivors = merged[merged != 0]
    assert torch.all(survivors == 2.0)  # 0.5 / 0.25
    assert stats.trimmed == 1000 - survivors.numel()
    assert 180 < survivors.numel() < 320  # about 250 kept


def test_dare_is_deterministic_per_seed():
    deltas = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    a, _ = run("dare_ties", deltas, density=0.3, seed=11)
    b, _ = run("dare_ties", deltas, density=0.3, seed=11)
    c, _ = run("dare_ties", deltas, density=0.3, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dare_masks_do_not_depend_on_chunking():
    from paligemma_cli.merge.sparsify import dare_keep, rows_per_block

    shape = (4096, 512)  # 2^21 entries: two random blocks of 2048 rows
    whole = dare_keep(shape, 0.4, seed=1, tensor="w", model=0)
    step = rows_per_block(shape)
    parts = [dare_keep((min(step, shape[0] - r), 512), 0.4, seed=1, tensor="w", model=0, row0=r,
                       full_shape=shape) for r in range(0, shape[0], step)]
    assert torch.equal(torch.cat(parts), whole)
    assert abs(whole.float().mean().item() - 0.4) < 0.01


def test_dare_ties_with_density_one_is_ties_without_trimming():
    deltas = [T([2.0, -1, 3]), T([-2.0, -3, 1])]
    assert torch.equal(run("dare_ties", deltas, density=1.0, normalize=True)[0],
                       run("ties", deltas, density=1.0)[0])


def test_task_arithmetic_is_lambda_times_weighted_sum():
    merged, _ = run("task_arithmetic", [T([1.0, 2]), T([3.0, -2])], (1, 0.5), lam=0.5, normalize=False)
    assert merged.tolist() == [1.25, 0.5]  # 0.5 * ([1, 2] + [1.5, -1])
    merged, _ = run("task_arithmetic", [T([1.0, 2]), T([3.0, -2])], (1, 0.5), normalize=True)
    assert merged.tolist() == pytest.approx([2.5 / 1.5, 1 / 1.5])


def test_linear_averages_the_full_weights():
    base = T([10.0, 10])
    # theta_1 = [11, 12], theta_2 = [13, 8]; (1 * theta_1 + 3 * theta_2) / 4 = [12.5, 9]
    merged, _ = run("linear", [T([1.0, 2]), T([3.0, -2])], (1, 3), base=base)
    assert (base + merged).tolist() == [12.5, 9.0]
    merged, _ = run("linear", [T([1.0, 2]), T([3.0, -2])], (1, 3), base=base, normalize=False)
    assert (base + merged).tolist() == [11 + 39.0, 12 + 24.0]  # the plain weighted sum


def test_slerp_follows_the_arc_and_falls_back_to_a_line():
    # orthogonal unit vectors, t = 0.5: the midpoint of the arc is (cos 45°, sin 45°)
    merged, _ = run("slerp", [T([1.0, 0]), T([0.0, 1])])
    assert merged.tolist() == pytest.approx([math.sqrt(0.5)] * 2)
    # w = (1, 3): t = 0.75 -> (cos 67.5°, sin 67.5°)
    merged, _ = run("slerp", [T([1.0, 0]), T([0.0, 1])], (1, 3))
    assert merged.tolist() == pytest.approx([math.cos(3 * math.pi / 8), math.sin(3 * math.pi / 8)])
    # parallel vectors: plain linear interpolation
    merged, _ = run("slerp", [T([1.0, 1]), T([2.0, 2])], (1, 3))
    assert merged.tolist() == pytest.approx([1.75, 1.75])


def test_layerswap_takes_whole_layers_and_averages_the_rest():
    layers = parse_layers("0-1=2,3=base", 2)
    assert layers == ((0, 1, 1), (3, 3, -1))
    deltas = [T([1.0]), T([3.0])]
    p = MergeParams(weights=(1.0, 1.0), layers=layers)
    fn = METHODS["layerswap"]
    for name, expected in [("language_model.model.layers.1.mlp.up_proj.weight", 3.0),
                           ("model.language_model.layers.0.self_attn.q_proj.weight", 3.0),
                           ("language_model.model.layers.3.mlp.up_proj.weight", 0.0),
                           ("language_model.model.layers.2.mlp.up_proj.weight", 2.0),
                           ("vision_tower.encoder.layers.0.mlp.fc1.weight", 2.0),
                           ("language_model.model.embed_tokens.weight", 2.0)]:
        assert fn(torch.zeros(1), deltas, p, TensorHints(name=name))[0].item() == expected, name
    assert layer_source("vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", layers) is None


@pytest.mark.parametrize("spec", ["0-3", "3-1=1", "0-3=3", "0-3=1,2-4=2", "", "x=1"])
def test_bad_layer_specs_name_the_flag(spec):
    with pytest.raises(PgmError, match="--layers"):
        parse_layers(spec, 2)


def test_unknown_mode_lists_the_supported_ones():
    with pytest.raises(PgmError) as info:
        get_method("tie")
    assert "tie" in info.value.message
    for name in ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "magnitude_prune",
                 "layerswap", "slerp"):
        assert name in info.value.hint


def test_combine_keeps_given_masks_and_counts_them():
    keep = [T([True, False, True]), T([True, True, False])]
    merged, stats = combine([T([1.0, 2, 3]), T([1.0, 0, 3])], (1.0, 1.0), keep, scale=2.0)
    assert merged.tolist() == [4.0, 0.0, 6.0]
    assert stats.trimmed == 2 and stats.entries == 6  # the 0 dropped from model 2 does not count
