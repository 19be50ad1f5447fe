"""The knobs of a merge, the per-tensor hints a method gets, and the counters it returns.

Kept apart from methods.py so the method modules (methods, spectral, gram) can share them without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paligemma_cli.merge.catalog import DEFAULT_COMMON_FRACTION, DEFAULT_EPSILON, DEFAULT_GAMMA, DEFAULT_REGMEAN_ALPHA
from paligemma_cli.merge.sparsify import Cutoff, LowerSet


@dataclass
class MergeStats:
    """What a merge did, summed over tensors (the CLI's table)."""

    tensors: int = 0
    entries: int = 0  # task-vector entries looked at: numel x models
    trimmed: int = 0  # non-zero entries zeroed by trimming (magnitude) or dropping (DARE)
    conflicts: int = 0  # entries whose kept values disagreed in sign; the elected sign won
    seconds: float = 0.0

    def add(self, other: "MergeStats") -> None:
        for name in ("tensors", "entries", "trimmed", "conflicts", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class MergeParams:
    """The knobs of one merge; unused ones are ignored by methods that do not take them."""

    weights: tuple[float, ...]
    density: float = 1.0
    lam: float = 1.0
    normalize: bool = True
    seed: int = 0
    # layerswap: (first layer, last layer, model index or -1 for the base), inclusive ranges
    layers: tuple[tuple[int, int, int], ...] = ()
    gamma: float = DEFAULT_GAMMA  # breadcrumbs: fraction of the largest |tau| dropped
    epsilon: float = DEFAULT_EPSILON  # della: keep probabilities span density +- epsilon
    common_fraction: float = DEFAULT_COMMON_FRACTION  # iso_cts
    device: str = "cpu"  # where the SVD methods run their linear algebra ("cpu" or "cuda")
    regmean_alpha: float = DEFAULT_REGMEAN_ALPHA  # RegMean: weight of the Gram matrices' off-diagonal


@dataclass
class TensorHints:
    """What a method needs to know beyond the chunk's values.

    The driver fills `cutoffs` / `windows` / `cos` with whole-tensor values when it feeds a large
    tensor in row chunks; left None, they are computed from the values given (the whole tensor).
    `ranks` bounds the rank of each input's task vector where it is known (a LoRA module's r; 0
    for an input that leaves the tensor unchanged; None: unknown, full rank). `side` carries
    per-tensor inputs beyond the weights for data-aware methods (e.g. RegMean's per-expert Gram
    matrices of the layer's inputs), filled by the job's `side_inputs` (see tensors.MergeJob).
    """

    name: str = ""
    row0: int = 0
    full_shape: tuple[int, ...] | None = None
    cutoffs: list[Cutoff] | None = None
    windows: list[tuple[LowerSet, LowerSet]] | None = None
    cos: float | None = None
    ranks: tuple[int | None, ...] | None = None
    side: Any = None
