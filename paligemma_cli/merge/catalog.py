"""The merge methods' names, one-line descriptions and flags, without torch.

`pgm merge --help` is built from this table and must not import torch; methods.py attaches the
functions. Adding a method is one entry here and one function there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    sparsify: str | None = None  # "magnitude" | "random": takes --density
    consensus: bool = False  # TIES sign election
    takes_lambda: bool = False
    normalize: bool = True  # default of --normalize/--no-normalize
    two_models: bool = False
    random: bool = False  # --seed matters


METHOD_INFO: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("linear", "weighted average of the full weights: sum w_i theta_i / sum w_i."),
    MethodInfo("task_arithmetic", "base + lambda * sum w_i tau_i (--normalize divides by sum w_i).",
               takes_lambda=True, normalize=False),
    MethodInfo("ties", "per tensor keep the top int(density * numel) |tau_i|; elect each "
               "entry's sign from the sum of the weighted trimmed vectors (0 counts as +); "
               "disjoint weighted mean of the agreeing entries; x lambda.",
               sparsify="magnitude", consensus=True, takes_lambda=True, normalize=True),
    MethodInfo("dare_ties", "drop each entry with probability 1 - density, rescale the "
               "survivors by 1/density; then TIES sign election (a sum; --normalize for the mean).",
               sparsify="random", consensus=True, takes_lambda=True, normalize=False, random=True),
    MethodInfo("dare_linear", "DARE drop and rescale, then the weighted sum x lambda.",
               sparsify="random", takes_lambda=True, normalize=False, random=True),
    MethodInfo("magnitude_prune", "top int(density * numel) |tau_i| per tensor, then the weighted "
               "sum x lambda (TIES without the sign election).",
               sparsify="magnitude", takes_lambda=True, normalize=False),
    MethodInfo("layerswap", "whole decoder layers from one model per --layers range (e.g. "
               "0-8=1,9-17=2); every other tensor is the weighted average."),
    MethodInfo("slerp", "two models only: spherical interpolation of the full weights, "
               "t = w_b / (w_a + w_b), the angle taken per tensor.", two_models=True),
)}
