"""STUDY.yaml -> a checked `Study`: every problem is one PgmError line before any model loads.

    base_model: tiny                      # a folder, a hub id, or tiny
    experts:                              # name -> adapter or full-model folder, its task's data
      vqav2: {path: runs/vqav2, data_root: data/vqav2}
      gqa:   {path: runs/gqa, data_root: data/gqa, task: gqa}
    max_eval_samples: 32
    grid:                                 # every method with lists of its parameters
      - {method: ties, density: [0.3, 0.5]}
      - {method: task_arithmetic, lambda: [0.5, 1.0]}

An expert's task is its name unless it has a `task:` key. A grid entry's list-valued parameters
are swept as a product; a scalar is held. Each grid point is checked by the same code as
`pgm merge`'s flags (merge.request.resolve_params), and the experts by the same checks as
`pgm merge`'s inputs (one fine-tuned from another base is refused).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError

TOP_KEYS = {"base_model", "experts", "grid", "max_eval_samples", "quantization", "compute_dtype",
            "batch_size", "max_new_tokens"}
EXPERT_KEYS = {"path", "data_root", "task"}
# grid key -> MergeRequest field; `seed` is DARE's / DELLA's drop seed
GRID_PARAMS = {"density": "density", "lambda": "lam", "gamma": "gamma", "epsilon": "epsilon",
               "common_fraction": "common_fraction", "normalize": "normalize", "seed": "seed",
               "regmean_alpha": "regmean_alpha", "calibration_samples": "calibration_samples"}
QUANTIZATIONS = ("4bit", "8bit", "none")


@dataclass(frozen=True)
class Expert:
    name: str
    task: str
    path: Path
    data_root: Path


@dataclass(frozen=True)
class GridPoint:
    """One merge of the grid: a method and the values of the parameters it was given."""

    method: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The merge's name in results.csv and the report, e.g. `ties density=0.3`."""
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.params)])


@dataclass(frozen=True)
class Study:
    base_model: str
    experts: tuple[Expert, ...]
    grid: tuple[GridPoint, ...]
    max_eval_samples: int | None = None
    quantization: str = "4bit"  # as pgm eval's default
    compute_dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: each task's default
    source: str = "STUDY.yaml"  # the file, for error lines

    @property
    def tasks(self) -> list[str]:
        return [e.task for e in self.experts]

    @property
    def param_names(self) -> list[str]:
        """Every parameter any grid point sets, in first-seen order (results.csv's columns)."""
        return list(dict.fromkeys(k for g in self.grid for k, _ in g.params))

    def expert_for(self, task: str) -> Expert:
        return next(e for e in self.experts if e.task == task)


def read_study(path: Path, overrides: dict[str, Any] | None = None) -> Study:
    """Read and check STUDY.yaml; `overrides` (flags; None values ignored) replace its keys."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PgmError(f"{path} does not exist.", "Give the study's YAML file (see `pgm study --help`).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PgmError(f"{path} is not valid YAML{where}.", "Fix the file's syntax.") from None
    if not isinstance(raw, dict):
        raise PgmError(f"{path} must be a mapping of keys (base_model, experts, grid, ...).",
                       "See `pgm study --help` for the file's shape.")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return _parse(raw, path)


def _parse(raw: dict, path: Path) -> Study:
    where = str(path)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise PgmError(f"{where}: unknown key '{unknown[0]}'.", f"The keys are {', '.join(sorted(TOP_KEYS))}.")
    for key in ("base_model", "experts", "grid"):
        if key not in raw:
            raise PgmError(f"{where}: '{key}' is missing.", "See `pgm study --help` for the file's shape.")
    experts = _experts(raw["experts"], where, path.parent)
    grid = _grid(raw["grid"], where)
    study = Study(base_model=str(raw["base_model"]), experts=experts, grid=grid, source=where)
    options = {k: raw[k] for k in ("max_eval_samples", "batch_size", "max_new_tokens") if raw.get(k) is not None}
    for key, value in options.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PgmError(f"{where}: {key} must be a whole number >= 1 (got {value!r}).", f"Fix {key}.")
    if "quantization" in raw and raw["quantization"] not in QUANTIZATIONS:
        raise PgmError(f"{where}: quantization must be one of {', '.join(QUANTIZATIONS)} "
                       f"(got {raw['quantization']!r}).", "Fix quantization.")
    extra = {k: raw[k] for k in ("quantization", "compute_dtype") if k in raw}
    return replace(study, **options, **extra)


def _experts(raw: Any, where: str, home: Path) -> tuple[Expert, ...]:
    from paligemma_cli.tasks import get_task

    if not isinstance(raw, dict) or not raw:
        raise PgmError(f"{where}: experts must map a name to {{path, data_root}}.",
                       "e.g. experts: {vqav2: {path: runs/vqav2, data_root: data/vqav2}}")
    experts = []
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise PgmError(f"{where}: experts.{name} must be a mapping with path and data_root.",
                           f"e.g. {name}: {{path: runs/{name}, data_root: data/{name}}}")
        unknown = sorted(set(entry) - EXPERT_KEYS)
        if unknown:
            raise PgmError(f"{where}: experts.{name} has an unknown key '{unknown[0]}'.",
                           f"An expert's keys are {', '.join(sorted(EXPERT_KEYS))}.")
        for key in ("path", "data_root"):
            if key not in entry:
                raise PgmError(f"{where}: experts.{name} has no {key}.", f"Add {key}: to experts.{name}.")
        task = str(entry.get("task", name))
        try:
            task = get_task(task).name
        except PgmError as exc:
            raise PgmError(f"{where}: experts.{name}: {exc.message}", exc.hint) from None
        folder, data_root = (_resolve(home, entry[k]) for k in ("path", "data_root"))
        if not folder.is_dir():
            raise PgmError(f"{where}: experts.{name}.path {folder} does not exist.",
                           "Point it at a pgm train output (adapter) or a full-model folder.")
        if not data_root.is_dir():
            raise PgmError(f"{where}: experts.{name}.data_root {data_root} does not exist.",
                           f"Point it at the {task} data root (`pgm data layout` shows what it holds).")
        experts.append(Expert(str(name), task, folder, data_root))
    tasks = [e.task for e in experts]
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise PgmError(f"{where}: two experts have the task {twice[0]}.",
                       "Each task has one expert (its expert score normalises the merges).")
    return tuple(experts)


def _resolve(home: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else home / path


def _grid(raw: Any, where: str) -> tuple[GridPoint, ...]:
    from paligemma_cli.merge.catalog import METHOD_INFO as METHODS

    if not isinstance(raw, list) or not raw:
        raise PgmError(f"{where}: grid must be a list of {{method: NAME, PARAM: [values]}}.",
                       "e.g. grid: [{method: ties, density: [0.3, 0.5]}]")
    points: list[GridPoint] = []
    for i, entry in enumerate(raw):
        at = f"{where}: grid[{i}]"
        if not isinstance(entry, dict) or "method" not in entry:
            raise PgmError(f"{at} has no method.", "Each grid entry is {method: NAME, PARAM: [values], ...}.")
        method = str(entry["method"])
        if method not in METHODS:
            raise PgmError(f"{at}: unknown method '{method}'.", f"The methods are {', '.join(METHODS)}.")
        unknown = sorted(set(entry) - {"method"} - set(GRID_PARAMS))
        if unknown:
            raise PgmError(f"{at} ({method}): unknown parameter '{unknown[0]}'.",
                           f"The grid's parameters are {', '.join(GRID_PARAMS)}.")
        names = [k for k in GRID_PARAMS if k in entry]
        values = [_values(entry[k], f"{at} ({method}) {k}") for k in names]
        for combo in itertools.product(*values):
            point = GridPoint(method, tuple(zip(names, combo)))
            if point not in points:
                points.append(point)
    return tuple(points)


def _values(value: Any, at: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PgmError(f"{at} is an empty list.", "Give at least one value.")
    for v in values:
        if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise PgmError(f"{at} must be finite numbers (got {v!r}).", "Fix the value.")
    return values


def merge_request(study: Study, point: GridPoint, base_folder: str):
    """The `pgm merge` request of one grid point (experts in the order of the file)."""
    from paligemma_cli.merge.catalog import METHOD_INFO
    from paligemma_cli.merge.request import MergeRequest

    values = {GRID_PARAMS[k]: v for k, v in point.params}
    if "normalize" in values:
        values["normalize"] = bool(values["normalize"])
    if METHOD_INFO[point.method].data_aware:  # RegMean: each expert calibrates on its own task's data
        values["calibrate"] = tuple(f"{e.task}={e.data_root}" for e in study.experts)
    return MergeRequest(base_model=base_folder, models=tuple(str(e.path) for e in study.experts),
                        mode=point.method, **values)


def check_study(study: Study, base_folder: str) -> None:
    """Every grid point's parameters (as `pgm merge` checks its flags) and the experts against the
    base (as `pgm merge` checks its inputs: headers only, nothing loads)."""
    from paligemma_cli.merge.driver import prepare
    from paligemma_cli.merge.request import resolve_params

    for i, point in enumerate(study.grid):
        try:
            resolve_params(merge_request(study, point, base_folder))
        except PgmError as exc:
            message = exc.message.replace("--mode ", "").replace("--", "")  # flags are keys here
            raise PgmError(f"{study.source}: grid '{point.label}': {message}", exc.hint) from None
    try:
        prepare(merge_request(study, study.grid[0], base_folder))
    except PgmError as exc:
        raise PgmError(f"{study.source}: {exc.message}", exc.hint) from None
