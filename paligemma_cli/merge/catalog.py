"""The merge methods' names, one-line descriptions, flags and defaults, without torch.

`pgm merge --help` is built from this table and must not import torch; methods.py attaches the
functions. Adding a method is one entry here and one function there. Every default below says
where it comes from (README's Merging section repeats them).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GAMMA = 0.01  # Breadcrumbs: fraction of the largest |tau| removed (mergekit's default)
DEFAULT_EPSILON = 0.1  # DELLA: half-width of the keep-probability range (the DELLA spec)
DEFAULT_COMMON_FRACTION = 0.8  # Iso-CTS: share of the common subspace (iso-merging's iso_cts.yaml)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    # how each task vector is thinned before it is combined: "magnitude" (TIES' top-k),
    # "random" (DARE), "breadcrumbs" (drop the smallest and the largest), "magprune" (DELLA)
    sparsify: str | None = None
    density: float | None = None  # default --density (None: the method takes no --density)
    consensus: bool = False  # TIES sign election
    takes_lambda: bool = False
    normalize: bool = True  # default of --normalize/--no-normalize
    two_models: bool = False
    random: bool = False  # --seed matters
    spectral: bool = False  # works on the SVD of whole 2-D task matrices (TSV-M, Iso-C, Iso-CTS)
    options: tuple[str, ...] = ()  # further flags it takes: "gamma", "epsilon", "common_fraction"
    data_aware: bool = False  # needs each expert's layer inputs on its task data (--calibrate)
    source: str = ""  # where its defaults come from

    @property
    def weighted(self) -> bool:
        """Whether --weight means anything (the SVD methods treat every task alike)."""
        return not self.spectral and not self.data_aware

    @property
    def normalizable(self) -> bool:
        return self.name not in ("slerp", "layerswap") and not self.spectral and not self.data_aware


METHOD_INFO: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("linear", "weighted average of the full weights: sum w_i theta_i / sum w_i.",
               source="mergekit (normalize on)"),
    MethodInfo("task_arithmetic", "base + lambda * sum w_i tau_i (--normalize divides by sum w_i).",
               takes_lambda=True, normalize=False,
               source="mergekit (lambda 1, normalize off); Ilharco et al. tune lambda on validation data"),
    MethodInfo("ties", "per tensor keep the top int(density * numel) |tau_i|; elect each "
               "entry's sign from the sum of the weighted trimmed vectors (0 counts as +); "
               "disjoint weighted mean of the agreeing entries; x lambda.",
               sparsify="magnitude", density=0.3, consensus=True, takes_lambda=True, normalize=True,
               source="density 0.3: merge_vlm.py, the tool pgm replaces (the TIES paper uses 0.2 "
                      "without validation data); lambda 1 and the disjoint mean: TIES paper, mergekit"),
    MethodInfo("dare_ties", "drop each entry with probability 1 - density, rescale the "
               "survivors by 1/density; then TIES sign election and disjoint mean (--no-normalize: "
               "their sum).",
               sparsify="random", density=0.3, consensus=True, takes_lambda=True, normalize=True,
               random=True,
               source="density 0.3: merge_vlm.py; normalize on: DARE plugs into TIES-Merging, whose "
                      "merge is the disjoint mean (mergekit defaults it off, which sums N rescaled experts)"),
    MethodInfo("dare_linear", "DARE drop and rescale, then the weighted sum x lambda.",
               sparsify="random", density=0.3, takes_lambda=True, normalize=False, random=True,
               source="density 0.3: merge_vlm.py; lambda 1, normalize off: mergekit"),
    MethodInfo("magnitude_prune", "top int(density * numel) |tau_i| per tensor, then the weighted "
               "sum x lambda (TIES without the sign election).",
               sparsify="magnitude", density=0.3, takes_lambda=True, normalize=False,
               source="density 0.3: merge_vlm.py; lambda 1, normalize off: mergekit"),
    MethodInfo("layerswap", "whole decoder layers from one model per --layers range (e.g. "
               "0-8=1,9-17=2); every other tensor is the weighted average."),
    MethodInfo("slerp", "two models only: spherical interpolation of the full weights, "
               "t = w_b / (w_a + w_b), the angle taken per tensor.", two_models=True),
    MethodInfo("tsv", "TSV-M: per 2-D matrix keep each task's top int(k/T) singular triplets, "
               "orthogonalise the stacked left and right singular vectors (polar factor), "
               "U S V; other tensors the mean of tau_i; base + lambda x that.",
               takes_lambda=True, spectral=True,
               source="lambda (alpha) 1: FusionBench; the official repo tunes it in 0.1-3.0"),
    MethodInfo("iso_c", "Iso-C: per 2-D matrix the SVD of sum tau_i with every singular value "
               "replaced by their mean; other tensors the mean of tau_i; base + lambda x that.",
               takes_lambda=True, spectral=True, source="lambda (alpha) 1: FusionBench"),
    MethodInfo("iso_cts", "Iso-CTS: the sum's top singular directions (--common-fraction) plus "
               "each task's top directions outside them, orthogonalised, all singular values "
               "their mean; other tensors the mean of tau_i; base + lambda x that.",
               takes_lambda=True, spectral=True, options=("common_fraction",),
               source="common fraction 0.8: iso-merging's iso_cts.yaml; lambda (alpha) 1: FusionBench"),
    MethodInfo("breadcrumbs", "Model Breadcrumbs: per tensor drop the int(gamma * numel) largest "
               "and the smallest |tau_i| so int(density * numel) remain; weighted sum x lambda.",
               sparsify="breadcrumbs", density=0.9, takes_lambda=True, normalize=False,
               options=("gamma",),
               source="density 0.9, gamma 0.01: mergekit's docs; lambda 1, normalize off: mergekit"),
    MethodInfo("breadcrumbs_ties", "Breadcrumbs' drop, then TIES sign election; the sum of the "
               "agreeing entries (--normalize: their mean) x lambda.",
               sparsify="breadcrumbs", density=0.9, consensus=True, takes_lambda=True, normalize=False,
               options=("gamma",),
               source="density 0.9, gamma 0.01: mergekit's docs; lambda 1, normalize off: mergekit"),
    MethodInfo("della", "DELLA: keep each entry with a probability rising with its magnitude rank "
               "in its row, density +- epsilon, rescale by 1/p; TIES sign election, disjoint mean.",
               sparsify="magprune", density=0.7, consensus=True, takes_lambda=True, normalize=True,
               random=True, options=("epsilon",),
               source="density 0.7: mergekit's examples; epsilon 0.1; normalize on: mergekit"),
    MethodInfo("della_linear", "DELLA's rank-based drop and 1/p rescale, then the weighted sum "
               "x lambda.",
               sparsify="magprune", density=0.7, takes_lambda=True, normalize=False, random=True,
               options=("epsilon",),
               source="density 0.7: mergekit's examples; epsilon 0.1; lambda 1, normalize off: mergekit"),
    MethodInfo("regmean", "RegMean: per linear layer W* = (sum W_i G_i)(sum G_i)^-1, G_i the Gram "
               "matrix of the layer's inputs while expert i runs on its task (--calibrate), "
               "off-diagonal x --regmean-alpha; other tensors the mean of the experts.",
               data_aware=True, options=("regmean_alpha",),
               source="alpha 0.9: FusionBench's regmean; 256 samples per task: FusionBench / the paper's code"),
)}
DEFAULT_REGMEAN_ALPHA = 0.9  # FusionBench's regmean config
DEFAULT_CALIBRATION_SAMPLES = 256
