"""What `pgm merge` was asked (MergeRequest), what it did (MergeResult), and the flags' checks.

`resolve_params` turns a request into a method and its MergeParams, with one PgmError that
lists every problem, and says what deserves a warning (`warnings_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from paligemma_cli.errors import PgmError
from paligemma_cli.merge.catalog import DEFAULT_COMMON_FRACTION, DEFAULT_EPSILON, DEFAULT_GAMMA, DEFAULT_REGMEAN_ALPHA
from paligemma_cli.merge.methods import MergeParams, MergeStats, Method, get_method, parse_layers

DEVICES = ("auto", "cpu", "cuda")
SPECTRAL = "the SVD methods (tsv, iso_c, iso_cts)"


@dataclass(frozen=True)
class MergeRequest:
    """Everything `pgm merge` was asked to do (None: the method's default)."""

    base_model: str
    models: tuple[str, ...]
    output: Path | None = None  # None: merged in memory only (tensors.MergeStream)
    mode: str = "ties"
    weights: tuple[float, ...] | None = None
    density: float | None = None
    lam: float | None = None
    seed: int = 0
    normalize: bool | None = None
    layers: str | None = None
    output_format: str = "full"
    rank: int | None = None
    overwrite: bool = False
    check_base: bool = True
    gamma: float | None = None
    epsilon: float | None = None
    common_fraction: float | None = None
    device: str | None = None  # auto (CUDA when torch sees it), cpu or cuda; SVD methods only
    calibrate: tuple[str, ...] = ()  # regmean: TASK=DATA_ROOT per model, in --model order
    calibration_samples: int | None = None  # regmean: examples per task
    regmean_alpha: float | None = None


@dataclass
class MergeResult:
    output: Path
    method: str
    params: MergeParams
    parts: dict[str, MergeStats]  # per model part, plus "unchanged" (copied from the base)
    files: list[str]
    seconds: float
    kinds: list[str] = field(default_factory=list)  # "model" / "adapter" per input
    lowrank_errors: dict[str, float] = field(default_factory=dict)  # adapter output only
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the adapter's per-module ranks


def _unused(req: MergeRequest, method: Method) -> list[str]:
    """Flags given that the method does not read."""
    name = method.name
    unused = [(req.density is not None and method.density is None, "--density"),
              (req.lam is not None and not method.takes_lambda, "--lambda"),
              (req.normalize is not None and not method.normalizable, "--normalize/--no-normalize"),
              (req.weights is not None and not method.weighted, "--weight"),
              (req.gamma is not None and "gamma" not in method.options, "--gamma"),
              (req.epsilon is not None and "epsilon" not in method.options, "--epsilon"),
              (req.common_fraction is not None and "common_fraction" not in method.options, "--common-fraction"),
              (req.device is not None and not method.spectral, "--device"),
              (bool(req.calibrate) and not method.data_aware, "--calibrate"),
              (req.calibration_samples is not None and not method.data_aware, "--calibration-samples"),
              (req.regmean_alpha is not None and not method.data_aware, "--regmean-alpha")]
    problems = [f"{flag} has no effect with --mode {name}" for bad, flag in unused if bad]
    if req.device is not None and not method.spectral:
        problems[-1] += f" (it applies to {SPECTRAL})"
    return problems


def _ranges(req: MergeRequest, method: Method, density: float) -> list[str]:
    """Values out of range, for the flags the method takes."""
    takes = {"--density": method.density is not None, "--lambda": method.takes_lambda,
             "--gamma": "gamma" in method.options, "--epsilon": "epsilon" in method.options,
             "--common-fraction": "common_fraction" in method.options}
    given = {"--density": req.density, "--lambda": req.lam, "--gamma": req.gamma, "--epsilon": req.epsilon,
             "--common-fraction": req.common_fraction}
    checks = {"--density": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"), "--gamma": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
              "--epsilon": (lambda v: v >= 0.0, ">= 0"), "--common-fraction": (lambda v: 0.0 < v <= 1.0, "in (0, 1]")}
    problems = []
    for flag, value in given.items():
        if value is None or not takes[flag]:
            continue
        if not math.isfinite(value):
            problems.append(f"{flag} must be a finite number (got {value:g})")
        elif flag in checks and not checks[flag][0](value):
            problems.append(f"{flag} must be {checks[flag][1]} (got {value:g})")
    epsilon = DEFAULT_EPSILON if req.epsilon is None else req.epsilon
    if method.sparsify == "magprune" and not problems and density < 1.0 and \
            not (density - epsilon > 0 and density + epsilon < 1):
        problems.append(f"--density {density:g} and --epsilon {epsilon:g} give keep probabilities outside "
                        "(0, 1): density - epsilon must be > 0 and density + epsilon < 1 (as mergekit asks)")
    return problems


def _device(req: MergeRequest, method: Method) -> tuple[str, list[str]]:
    choice = req.device or "auto"
    if choice not in DEVICES:
        return "cpu", [f"--device must be auto, cpu or cuda (got {choice!r})"]
    if not method.spectral or choice == "cpu":
        return "cpu", []
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        return "cpu", ["--device cuda: torch sees no CUDA GPU here (pass --device cpu, or auto)"]
    return ("cuda" if torch.cuda.is_available() else "cpu"), []


def resolve_params(req: MergeRequest) -> tuple[Method, MergeParams]:
    """Check the flags against each other; one PgmError listing every problem."""
    method = get_method(req.mode)
    n = len(req.models)
    problems = []
    if n < 2:
        problems.append(f"pgm merge needs at least two models (got {n}): pass --model twice, or "
                        "--model-a and --model-b")
    if method.two_models and n != 2:
        problems.append(f"--mode {method.name} merges exactly two models (got {n})")
    weights = tuple(req.weights) if req.weights else (1.0,) * n
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:  # nan passes every range check, and inf/nan would be written into the model
        problems.append(f"--weight must be a finite number (got {bad[0]})")
    if req.weights and len(weights) != n and method.weighted:
        problems.append(f"--weight was given {len(weights)} times for {n} models: give one per model, "
                        "in --model order")
    problems += _unused(req, method)
    density = req.density if req.density is not None else (method.density or 1.0)
    problems += _ranges(req, method, density)
    if (req.layers is None) == (method.name == "layerswap"):
        problems.append("--mode layerswap needs --layers (e.g. --layers 0-8=1,9-17=2)" if req.layers is None
                        else f"--layers only applies to --mode layerswap, not {method.name}")
    normalize = method.normalize if req.normalize is None else req.normalize
    if len(weights) == n and n >= 2 and abs(sum(weights)) < 1e-8 and (
            method.name in ("slerp", "layerswap") or (method.name == "linear" and normalize)):
        problems.append("the --weight values sum to 0, so the weighted average is undefined")
    if method.name == "slerp" and any(w < 0 for w in weights):
        problems.append("--mode slerp takes non-negative --weight values (t = w_b / (w_a + w_b))")
    if req.output_format not in ("full", "adapter"):
        problems.append(f"--output-format must be full or adapter (got {req.output_format!r})")
    if req.rank is not None and req.rank < 1:
        problems.append(f"--rank must be >= 1 (got {req.rank})")
    device, device_problems = _device(req, method)
    problems += device_problems + (_calibration(req, n) if method.data_aware else [])
    if problems:
        raise PgmError("; ".join(problems) + ".", "See `pgm merge --help`.")
    layers = parse_layers(req.layers, n) if req.layers else ()
    return method, MergeParams(
        weights=weights, density=density, lam=1.0 if req.lam is None else req.lam, normalize=normalize,
        seed=req.seed, layers=layers, gamma=DEFAULT_GAMMA if req.gamma is None else req.gamma,
        epsilon=DEFAULT_EPSILON if req.epsilon is None else req.epsilon,
        common_fraction=DEFAULT_COMMON_FRACTION if req.common_fraction is None else req.common_fraction,
        device=device, regmean_alpha=DEFAULT_REGMEAN_ALPHA if req.regmean_alpha is None else req.regmean_alpha)


def calibration_sets(req: MergeRequest) -> list[tuple[str, Path]]:
    """--calibrate TASK=DATA_ROOT values as (task, root), in --model order (checked by resolve_params)."""
    return [(v.partition("=")[0], Path(v.partition("=")[2]).expanduser()) for v in req.calibrate]


def _calibration(req: MergeRequest, n: int) -> list[str]:
    """RegMean's flags: one --calibrate TASK=DATA_ROOT per model, a known task, an existing root."""
    from paligemma_cli.tasks import TASKS

    problems = []
    if len(req.calibrate) != n:
        problems.append(f"--mode regmean needs one --calibrate TASK=DATA_ROOT per --model, in the same order "
                        f"(got {len(req.calibrate)} for {n} models)")
    for value in req.calibrate:
        task, sep, root = value.partition("=")
        if not sep or not root:
            problems.append(f"--calibrate {value}: give TASK=DATA_ROOT (e.g. vqav2=/data/vqav2)")
        elif task not in TASKS:
            problems.append(f"--calibrate {value}: unknown task {task!r} (tasks: {', '.join(sorted(TASKS))})")
        elif not Path(root).expanduser().is_dir():
            problems.append(f"--calibrate {value}: {root} does not exist")
    alpha = req.regmean_alpha
    if alpha is not None and not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
        problems.append(f"--regmean-alpha must be in (0, 1] (got {alpha:g})")
    if req.calibration_samples is not None and req.calibration_samples < 1:
        problems.append(f"--calibration-samples must be >= 1 (got {req.calibration_samples})")
    return problems


def warnings_for(method: Method, params: MergeParams) -> list[str]:
    """One line when an unnormalised method adds several task vectors at lambda 1: the merged
    change is then about N times one expert's, which can wreck the model (issue #22)."""
    n = sum(1 for w in params.weights if w != 0)
    sums = method.takes_lambda and not method.spectral and not params.normalize
    if not sums or n < 2 or params.lam != 1.0:
        return []
    return [f"{method.name} adds {n} task vectors at lambda 1 without --normalize, so the merged change "
            f"is up to {n}x one expert's; pass --lambda {1 / n:.3g} (or --normalize) to keep it at one "
            "expert's scale."]
