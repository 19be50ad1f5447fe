"""`pgm merge` end to end: check everything, merge tensor by tensor (tensors.py), write.

--output is claimed through `paligemma_cli.outputs` (locked, staged, own files only): the merge is
written into its staging folder and moved into place at the end, so a failure leaves nothing behind
and --overwrite replaces only what an earlier pgm merge wrote there. `prepare` opens and checks the inputs of a request
without an output; `tensors.MergeStream` / `tensors.merged_state_dict` then give the merged
model in memory (what `pgm study` uses), byte for byte what `merge` writes.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from paligemma_cli import outputs
from paligemma_cli.errors import PgmError
from paligemma_cli.merge import checks
from paligemma_cli.merge.lowrank import merge_to_adapter
from paligemma_cli.merge.methods import MergeParams
from paligemma_cli.merge.catalog import DEFAULT_CALIBRATION_SAMPLES
from paligemma_cli.merge.request import MergeRequest, MergeResult, calibration_sets, resolve_params, warnings_for
from paligemma_cli.merge.sources import FullModel, TensorInfo, local_folder, open_input, safetensors_header
from paligemma_cli.merge.tensors import MergeJob, MergeStream, Progress
from paligemma_cli.merge.writer import ITEM_BYTES, ShardedWriter

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
Warn = Callable[[str], None]

__all__ = ["MergeRequest", "MergeResult", "merge", "prepare", "resolve_params", "check_output", "staged",
           "write_recipe"]


def check_output(req: MergeRequest, base_folder: Path, inputs: list) -> None:
    output = Path(req.output).expanduser()
    sources = [base_folder] + [i.folder for i in inputs]
    for folder in sources:
        if output.resolve() == folder.resolve() or output.resolve() in folder.resolve().parents:
            raise PgmError(f"--output {req.output} would replace an input ({folder}).",
                           "Write the merge to a new folder.")


def _open(req: MergeRequest):
    base_folder = local_folder(req.base_model, "--base-model")
    if not (base_folder / "config.json").exists():
        hint = "It is a LoRA adapter: pass it with --model and its base with --base-model." \
            if (base_folder / "adapter_config.json").exists() else "Point it at a model folder."
        raise PgmError(f"--base-model {req.base_model} has no config.json.", hint)
    inputs = [open_input(spec, "--model") for spec in req.models]
    return base_folder, inputs


def _check(req: MergeRequest, method, params: MergeParams, base_folder: Path, inputs: list) -> MergeJob:
    base = safetensors_header(base_folder, "--base-model")
    base_config = json.loads((base_folder / "config.json").read_text())
    for src in inputs:
        if isinstance(src, FullModel):
            checks.check_full_model(src, base, base_config)
        else:
            checks.check_adapter(src, base, req.base_model, base_folder, req.check_base)
    if params.layers:
        _check_layers(params, base)
    return MergeJob(method, params, base, inputs)


def prepare(req: MergeRequest) -> MergeJob:
    """Open and check the inputs of `req` (its output is not looked at): a job to merge in memory
    with tensors.MergeStream(job) or tensors.merged_state_dict(job)."""
    method, params = resolve_params(req)
    base_folder, inputs = _open(req)
    return _check(req, method, params, base_folder, inputs)


def merge(req: MergeRequest, progress: Progress | None = None, on_warning: Warn | None = None,
          events=None) -> MergeResult:
    """Run a merge end to end (see the module docstring); raises PgmError on bad input.
    Warnings (e.g. an unnormalised sum of several task vectors) go to `on_warning` as soon as
    they are known, and into the result."""
    if req.output is None:
        raise PgmError("--output is required.", "Name a folder to create.")
    method, params = resolve_params(req)  # the flags first, then the output, then the inputs
    notes = outputs.check_output(Path(req.output).expanduser(), "merge", overwrite=req.overwrite, flag="--output")
    base_folder, inputs = _open(req)
    check_output(req, base_folder, inputs)
    job = _check(req, method, params, base_folder, inputs)
    warnings = warnings_for(method, params)
    for line in warnings:
        if on_warning:
            on_warning(line)
    with tempfile.TemporaryDirectory(prefix="pgm-grams-") as workdir:  # RegMean's Gram matrices
        add_side_inputs(req, job, base_folder, Path(workdir), events)
        if req.output_format == "adapter":
            result = _merge_adapter(req, job, progress, warnings)
        else:
            result = _merge_full(req, job, base_folder, progress, warnings)
    result.notes = notes + result.notes
    return result


def add_side_inputs(req: MergeRequest, job: MergeJob, base_folder: Path, workdir: Path, events=None) -> None:
    """A data-aware method's per-tensor inputs (RegMean: each expert's Gram matrices, calibrated
    on its --calibrate data into `workdir`), set as `job.side_inputs`. Nothing for other methods."""
    if not job.method.data_aware:
        return
    from paligemma_cli.merge.calibrate import regmean_side_inputs

    samples = req.calibration_samples or DEFAULT_CALIBRATION_SAMPLES
    job.side_inputs = regmean_side_inputs(job, calibration_sets(req), Path(base_folder), workdir,
                                          samples=samples, events=events)
    job.side_info = {"calibrate": list(req.calibrate), "calibration_samples": samples,
                     "calibration_examples": job.side_inputs.samples}


def _check_layers(params: MergeParams, base: dict[str, TensorInfo]) -> None:
    from paligemma_cli.merge.methods import DECODER_LAYER

    found = {int(m.group(1)) for k in base if (m := DECODER_LAYER.search(k))}
    top = max(found, default=-1)
    for first, last, _ in params.layers:
        if last > top:
            raise PgmError(f"--layers {first}-{last}: the model has decoder layers 0-{top}.",
                           "Use layer indices that exist.")


def _merge_adapter(req: MergeRequest, job: MergeJob, progress: Progress | None, warnings: list[str]
                   ) -> MergeResult:
    output = Path(req.output).expanduser()
    started = time.perf_counter()
    with staged(req) as (tmp, notes):
        lora = merge_to_adapter(job, req.rank, req.base_model, progress)
        from safetensors.torch import save_file

        save_file(lora.tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(lora.config, indent=2) + "\n")
        result = MergeResult(output, job.method.name, job.params, lora.parts,
                             ["adapter_model.safetensors", "adapter_config.json"], time.perf_counter() - started,
                             [src.kind for src in job.inputs], lora.errors, warnings, notes + lora.notes)
        write_recipe(tmp, req, result, rank=lora.config["r"], side_info=job.side_info)
    return result


def _merge_full(req: MergeRequest, job: MergeJob, base_folder: Path, progress: Progress | None,
                warnings: list[str]) -> MergeResult:
    output = Path(req.output).expanduser()
    total = sum(math.prod(i.shape) * ITEM_BYTES[i.dtype] for i in job.base.values())
    parent = next(p for p in [output.parent, *output.parent.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if free < total * 1.05:
        raise PgmError(f"--output {req.output}: the merged model needs {total / 1e9:.1f} GB, "
                       f"{free / 1e9:.1f} GB are free there.", "Free some space or write elsewhere.")
    started = time.perf_counter()
    with staged(req, needed=total) as (tmp, notes):
        writer = ShardedWriter(tmp, [(k, i.shape, i.dtype) for k, i in job.base.items()])
        stream = MergeStream(job, progress)
        try:
            for key, chunk, _ in stream.chunks():
                writer.write(key, chunk)
            files = writer.close()
        finally:
            writer.abort()
        _copy_side_files(base_folder, tmp)
        result = MergeResult(output, job.method.name, job.params, stream.parts, files,
                             time.perf_counter() - started, [src.kind for src in job.inputs],
                             warnings=warnings, notes=notes)
        write_recipe(tmp, req, result, side_info=job.side_info)
    return result


@contextmanager
def staged(req: MergeRequest, needed: int | None = None) -> Iterator[tuple[Path, list[str]]]:
    """Claim --output (`outputs.claim_output`: locked, own files only) and yield a staging folder
    whose files become --output's when the block succeeds (a failure leaves the earlier output as
    it was), with the notes of what an interrupted merge left there and was removed."""
    with outputs.claim_output(Path(req.output).expanduser(), "merge", overwrite=req.overwrite,
                              flag="--output") as out:
        out.needed = needed
        with out.staged() as tmp:
            yield tmp, out.notes


def _copy_side_files(base_folder: Path, dest: Path) -> None:
    """Config, processor, tokenizer and generation files from the base (not its weights)."""
    for path in sorted(base_folder.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and not path.name.startswith(
                ("adapter_", outputs.BOOKKEEPING)) and path.name != "model.safetensors.index.json":
            shutil.copy2(path, dest / path.name)


def write_recipe(folder: Path, req: MergeRequest, result: MergeResult, rank: int | None = None,
                 side_info: dict | None = None) -> None:
    """pgm_merge.json: how this folder was made, so a merge can be reproduced."""
    from paligemma_cli.merge.catalog import METHOD_INFO

    info, p = METHOD_INFO[result.method], result.params
    recipe = {"base_model": req.base_model, "models": list(req.models), "mode": result.method,
              "weights": list(p.weights), "density": p.density, "lambda": p.lam, "normalize": p.normalize,
              "seed": p.seed, "layers": req.layers, "output_format": req.output_format}
    recipe.update({name: getattr(p, name) for name in info.options})
    recipe.update(side_info or {})
    if info.spectral:
        recipe["device"] = p.device
    recipe["stats"] = {k: vars(v) for k, v in result.parts.items()}
    if result.warnings:
        recipe["warnings"] = result.warnings
    if result.lowrank_errors:
        recipe["rank"] = rank
        recipe["relative_error"] = result.lowrank_errors
    (folder / "pgm_merge.json").write_text(json.dumps(recipe, indent=2) + "\n")
