"""`--output-format adapter`: refactor each merged weight change back into a LoRA by truncated SVD.

When every input is an adapter, the merged change is non-zero only on the LoRA target modules, so
it fits in a few MB: dW ~ U_r S_r V_r^T = (U_r sqrt(S_r)) (sqrt(S_r) V_r^T) = B·A, saved with
lora_alpha = r (scale 1). Linear and task-arithmetic merges of rank-r adapters are exactly of
rank <= the sum of the ranks (the default --rank); TIES / DARE change entries one by one, so their
change is full-rank and the relative error ||dW - B·A||_F / ||dW||_F is reported per module.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge import driver
from paligemma_cli.merge.methods import MergeParams, MergeStats, Method
from paligemma_cli.merge.sources import Adapter, TensorInfo, module_name

EXACT_SVD_MAX = 1024  # larger matrices use a randomised SVD (seeded, 6 power iterations)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative Frobenius error) with B·A the best rank-`rank` approximation of `delta`."""
    r = min(rank, *delta.shape)
    total = float(torch.linalg.matrix_norm(delta))
    if total == 0.0:
        return torch.zeros(delta.shape[0], r), torch.zeros(r, delta.shape[1]), 0.0
    if min(delta.shape) <= EXACT_SVD_MAX:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        u, s, vh = u[:, :r], s[:r], vh[:r]
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta, q=min(r + 8, *delta.shape), niter=6)
        u, s, vh = u[:, :r], s[:r], v[:, :r].T
    root = s.sqrt()
    b, a = u * root, root[:, None] * vh
    error = float(torch.linalg.matrix_norm(delta - b @ a)) / total
    return b.contiguous(), a.contiguous(), error


def merge_to_adapter(req: "driver.MergeRequest", method: Method, params: MergeParams, inputs: list,
                     base: dict[str, TensorInfo], progress) -> "driver.MergeResult":
    """Merge adapters into one adapter of rank --rank (default: the sum of the input ranks)."""
    full = [src.spec for src in inputs if not isinstance(src, Adapter)]
    if full:
        raise PgmError(f"--output-format adapter needs every --model to be a LoRA adapter; {full[0]} "
                       "is a full model.", "Use --output-format full (the default).")
    extra = [src.spec for src in inputs if src.full]
    if extra:
        raise PgmError(f"--model {extra[0]} also changes whole weights (modules_to_save or biases), "
                       "which a LoRA cannot carry.", "Use --output-format full.")
    if not driver._zero_safe(method, params):
        raise PgmError("--mode linear --no-normalize changes every weight (sum of weights != 1), "
                       "which a LoRA cannot carry.", "Use --output-format full, or --normalize.")
    by_module = {module_name(k): k for k in base}
    order = {k: i for i, k in enumerate(base)}
    modules = sorted({m for src in inputs for m in src.modules}, key=lambda m: order[by_module[m + ".weight"]])
    started = time.perf_counter()
    with driver.staged(req) as (tmp, notes):
        tensors, errors, rank, stats = _factorize_all(modules, by_module, base, inputs, method, params,
                                                      req.rank, progress)
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = dict(inputs[0].config)
        config.update(r=rank, lora_alpha=rank, rank_pattern={}, alpha_pattern={}, use_rslora=False,
                      target_modules=modules, base_model_name_or_path=req.base_model, lora_dropout=0.0)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        result = driver.MergeResult(Path(req.output).expanduser(), method.name, params, stats,
                                    ["adapter_model.safetensors", "adapter_config.json"],
                                    time.perf_counter() - started, [src.kind for src in inputs], errors, notes)
        driver.write_recipe(tmp, req, result)
    return result


def _factorize_all(modules, by_module, base, inputs, method, params, rank, progress):
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    parts: dict[str, MergeStats] = {}
    rank = rank or sum(max((src.modules[m].rank for m in src.modules), default=0) for src in inputs)
    for done, module in enumerate(modules, 1):
        started = time.perf_counter()
        key = by_module[module + ".weight"]
        stats = MergeStats(tensors=1)
        pieces = [torch.zeros(b.shape) if merged is None else merged for _, b, merged in
                  driver._TensorMerge(key, base[key], inputs, method, params).merged_chunks(stats, True)]
        delta = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        lora = next(src.modules[module] for src in inputs if module in src.modules)
        flipped = lora.embedding or lora.fan_in_fan_out  # there the change is (B·A)^T
        b, a, errors[module] = low_rank(delta.T if flipped else delta, rank)
        prefix = f"base_model.model.{module}"
        if lora.embedding:
            tensors[f"{prefix}.lora_embedding_A"], tensors[f"{prefix}.lora_embedding_B"] = a, b
        else:
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
        stats.seconds = time.perf_counter() - started
        parts.setdefault(driver.part_of(key), MergeStats()).add(stats)
        if progress:
            progress(done, len(modules), key)
    return tensors, errors, rank, parts
