"""mergekit beside `pgm merge` in bench_merge.py: a throw-away venv, the equivalent YAML, and a
tie-aware comparison of the two outputs.

mergekit is installed into its own venv under the benchmark's temp dir (never into pgm's
environment), CPU torch first so pip does not pull a CUDA build. Its recipe mirrors pgm's
arithmetic: task vectors and the merge in float32 (`dtype: float32`), written as bfloat16.

mergekit 0.1.5 maps a checkpoint's keys to the model's transformers 5 names with transformers'
conversion table; for PaliGemma that table gives `model.language_model.model.layers...`, which is
no module's name, so on a PaliGemma folder as saved it merges the projector only (the row "config
as saved" counts what it writes). Given the same files under a config.json whose architecture
transformers does not know, it falls back to the files' own tensor names and merges everything;
the timed rows use that view (symlinks to the same safetensors files, only config.json differs).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

MERGEKIT = "mergekit==0.1.5"
TORCH = "torch==2.13.0"  # the CPU wheel; a bare `torch` would resolve to a multi-GB CUDA build
# pgm's defaults for what its flags set, written out for mergekit: ties and dare_ties normalise
# (the disjoint mean; mergekit's own default for dare_ties is off), task_arithmetic does not
RECIPES = {"ties": {"normalize": True}, "dare_ties": {"normalize": True},
           "task_arithmetic": {"normalize": False}}


def make_venv(root: Path) -> Path:
    """A venv with mergekit in `root`; returns its mergekit-yaml."""
    venv = root / "mergekit-venv"
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + [TORCH], check=True)
    subprocess.run(pip + [MERGEKIT], check=True)
    return exe


def raw_names_view(folders: list[Path], root: Path) -> list[Path]:
    """The same safetensors files (symlinked) under a config.json that makes mergekit use the
    files' tensor names (see the module docstring)."""
    views = []
    for folder in folders:
        view = root / f"view-{folder.name}"
        view.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.suffix == ".safetensors" or f.name.endswith(".index.json"):
                (view / f.name).unlink(missing_ok=True)
                (view / f.name).symlink_to(f.resolve())
        config = json.loads((folder / "config.json").read_text())
        config["architectures"] = ["PgmBenchRawTensorNames"]
        (view / "config.json").write_text(json.dumps(config, indent=2))
        views.append(view)
    return views


def write_yaml(path: Path, method: str, folders: list[Path], density: float) -> Path:
    """mergekit's recipe for pgm's `--mode method --density density` (weights 1)."""
    params = {"weight": 1.0}
    if method != "task_arithmetic":
        params["density"] = density
    recipe = {"merge_method": method, "base_model": str(folders[0]),
              "models": [{"model": str(f), "parameters": params} for f in folders[1:]],
              "parameters": RECIPES[method], "dtype": "float32", "out_dtype": "bfloat16"}
    path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
    return path


def compare(pgm_out: Path, mk_out: Path, folders: list[Path], method: str, density: float) -> dict:
    """Entry by entry on every tensor both wrote: the largest |pgm - mergekit|, and the largest
    where no model's |tau| equals its top-k cut-off. TIES keeps exactly k entries per model,
    and which of several entries equal to the k-th largest magnitude are kept is left open by
    the definition: pgm keeps the first in flat order, mergekit whatever torch.argsort's
    (unstable) order puts first. So only such tie entries may differ."""
    import torch

    from paligemma_cli.merge.driver import MergeRequest, resolve_params
    from paligemma_cli.merge.sources import module_name, open_input, read_rows, safetensors_header
    from paligemma_cli.merge.sparsify import kth_largest
    from paligemma_cli.merge.tensors import TensorMerge

    method_obj, params = resolve_params(MergeRequest(
        base_model=str(folders[0]), models=tuple(str(f) for f in folders[1:]), output=Path("unused"),
        mode=method, density=None if method == "task_arithmetic" else density))
    base = safetensors_header(folders[0], "base")
    inputs = [open_input(str(f), "--model") for f in folders[1:]]
    pgm, mk = safetensors_header(pgm_out, "pgm"), safetensors_header(mk_out, "mergekit")
    mk_names = {module_name(k): k for k in mk}
    out = {"tensors_compared": 0, "entries_differing": 0, "max_abs_diff": 0.0, "max_abs_diff_off_ties": 0.0,
           "mergekit_tensors": len(mk), "pgm_tensors": len(pgm)}
    for key, info in base.items():
        mkey = mk_names.get(module_name(key))
        if mkey is None:
            continue
        tm = TensorMerge(key, info, inputs, method_obj, params)
        cuts = None
        if method_obj.sparsify == "magnitude":
            numel = math.prod(info.shape)

            def magnitudes(tm=tm, numel=numel):
                for rows in tm.rows:
                    _, _, mags = tm.chunk(rows, magnitudes=True)
                    size = numel if rows is None else (rows[1] - rows[0]) * (numel // info.shape[0])
                    yield size, mags
            cuts = kth_largest(magnitudes, [int(density * numel)] * len(inputs), numel,
                               tm.sample() if len(tm.rows) > 1 else None)
        for rows in tm.rows:
            diff = (read_rows(pgm[key].file, key, rows).float()
                    - read_rows(mk[mkey].file, mkey, rows).float()).abs()
            out["entries_differing"] += int((diff > 0).count_nonzero())
            out["max_abs_diff"] = max(out["max_abs_diff"], float(diff.max()) if diff.numel() else 0.0)
            if cuts is not None:
                _, _, mags = tm.chunk(rows, magnitudes=True)
                for mag, cut in zip(mags, cuts):
                    at_cut = (mag == cut.value) if mag is not None else \
                        torch.full_like(diff, cut.value == 0.0, dtype=torch.bool)
                    diff = torch.where(at_cut, 0.0, diff)
            out["max_abs_diff_off_ties"] = max(out["max_abs_diff_off_ties"],
                                               float(diff.max()) if diff.numel() else 0.0)
        out["tensors_compared"] += 1
    return out
