"""`--output-format adapter`: refactor each merged weight change back into a LoRA by truncated SVD.

When every input is an adapter, the merged change is non-zero only on the LoRA target modules, so
it fits in a few MB: dW ~ U_r S_r V_r^T = (U_r sqrt(S_r)) (sqrt(S_r) V_r^T) = B·A, saved with
lora_alpha = r (scale 1); a module with a side smaller than r gets that smaller rank, recorded in
rank_pattern / alpha_pattern. Linear and task-arithmetic merges of rank-r adapters are exactly of
rank <= the sum of the ranks (the default --rank); TIES / DARE change entries one by one, so their
change is full-rank and the relative error ||dW - B·A||_F / ||dW||_F is reported per module.
Nothing here writes files: driver.py writes what `merge_to_adapter` returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from paligemma_cli.errors import PgmError
from paligemma_cli.merge.methods import MergeStats
from paligemma_cli.merge.sources import Adapter, module_name
from paligemma_cli.merge.tensors import MergeJob, TensorMerge, part_of, zero_safe

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


@dataclass
class AdapterOutput:
    """A merged LoRA: its tensors and adapter_config.json, the refit error and rank per module."""

    tensors: dict[str, torch.Tensor]
    config: dict
    errors: dict[str, float]
    parts: dict[str, MergeStats]
    notes: list[str]


def check_adapter_inputs(job: MergeJob) -> None:
    """--output-format adapter: every input a LoRA adapter, and a merge a LoRA can carry."""
    full = [src.spec for src in job.inputs if not isinstance(src, Adapter)]
    if full:
        raise PgmError(f"--output-format adapter needs every --model to be a LoRA adapter; {full[0]} "
                       "is a full model.", "Use --output-format full (the default).")
    extra = [src.spec for src in job.inputs if src.full]
    if extra:
        raise PgmError(f"--model {extra[0]} also changes whole weights (modules_to_save or biases), "
                       "which a LoRA cannot carry.", "Use --output-format full.")
    if not zero_safe(job.method, job.params):
        raise PgmError("--mode linear --no-normalize changes every weight (sum of weights != 1), "
                       "which a LoRA cannot carry.", "Use --output-format full, or --normalize.")


def merge_to_adapter(job: MergeJob, rank: int | None, base_model: str, progress=None) -> AdapterOutput:
    """Merge adapters into one LoRA of rank `rank` (default: the sum of the input ranks).

    A module whose smaller side is below that rank gets a factor of that size; adapter_config.json
    then records its rank in `rank_pattern` (and `alpha_pattern`, so every module's scale stays
    alpha/r = 1), so PEFT builds each module with the rank its factors have."""
    check_adapter_inputs(job)
    by_module = {module_name(k): k for k in job.base}
    order = {k: i for i, k in enumerate(job.base)}
    modules = sorted({m for src in job.inputs for m in src.modules},
                     key=lambda m: order[by_module[m + ".weight"]])
    rank = rank or sum(max((src.modules[m].rank for m in src.modules), default=0) for src in job.inputs)
    tensors, errors, ranks, parts = _factorize_all(modules, by_module, job, rank, progress)
    smaller = {m: r for m, r in ranks.items() if r != rank}
    config = dict(job.inputs[0].config)
    config.update(r=rank, lora_alpha=rank, rank_pattern=smaller, alpha_pattern=dict(smaller), use_rslora=False,
                  target_modules=modules, base_model_name_or_path=base_model, lora_dropout=0.0)
    notes = []
    if smaller:
        sizes = ", ".join(f"{r}" for r in sorted(set(smaller.values())))
        notes.append(f"adapter rank {rank}; {len(smaller)} module(s) are smaller than that on one side and "
                     f"have rank {sizes}, recorded in rank_pattern and alpha_pattern of adapter_config.json.")
    return AdapterOutput(tensors, config, errors, parts, notes)


def _factorize_all(modules, by_module, job: MergeJob, rank: int, progress):
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    ranks: dict[str, int] = {}
    parts: dict[str, MergeStats] = {}
    for done, module in enumerate(modules, 1):
        started = time.perf_counter()
        key = by_module[module + ".weight"]
        stats = MergeStats(tensors=1)
        merge = TensorMerge(key, job.base[key], job.inputs, job.method, job.params, job.side_inputs)
        pieces = [torch.zeros(b.shape) if merged is None else merged
                  for _, b, merged in merge.merged_chunks(stats, True)]
        delta = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        lora = next(src.modules[module] for src in job.inputs if module in src.modules)
        flipped = lora.embedding or lora.fan_in_fan_out  # there the change is (B·A)^T
        b, a, errors[module] = low_rank(delta.T if flipped else delta, rank)
        ranks[module] = a.shape[0]
        prefix = f"base_model.model.{module}"
        if lora.embedding:
            tensors[f"{prefix}.lora_embedding_A"], tensors[f"{prefix}.lora_embedding_B"] = a, b
        else:
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
        stats.seconds = time.perf_counter() - started
        parts.setdefault(part_of(key), MergeStats()).add(stats)
        if progress:
            progress(done, len(modules), key)
    return tensors, errors, ranks, parts
