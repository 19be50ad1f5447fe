"""torch.compile for the merge's elementwise hot spots, with eager torch as the fallback.

A TIES chunk is some 30 elementwise passes (trim, weight, elect, disjoint mean, statistics); in
eager torch each allocates and sweeps memory, and on a few CPU cores that, not reading the
checkpoints, is what a 3B merge waits for. `fusable` functions are written once, as plain torch
without data-dependent Python branches, and run compiled (one fused loop) on large chunks when
torch.compile works here, eagerly otherwise: on small tensors (tests, the tiny model), with
PGM_MERGE_COMPILE=0, or when compiling fails (no C++ compiler). Both give the same numbers up to
float rounding of the final sums.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

MIN_ENTRIES = 1 << 20  # smaller chunks run eagerly: compiling would cost more than it saves
_state = {"enabled": os.environ.get("PGM_MERGE_COMPILE", "1").lower() not in ("0", "false", "no", "off")}


def enabled() -> bool:
    return _state["enabled"]


def set_enabled(value: bool) -> None:
    """Turn compiled kernels on or off for this process (tests compare both)."""
    _state["enabled"] = value


def _first_tensor(args):
    for arg in args:
        if hasattr(arg, "numel"):
            return arg
        if isinstance(arg, (list, tuple)) and arg and hasattr(arg[0], "numel"):
            return arg[0]
    return None


def _flat(value, numel: int):
    """1-D views of the chunk-sized tensors, so one compiled kernel serves every shape."""
    if isinstance(value, (list, tuple)):
        return type(value)(_flat(v, numel) for v in value)
    if hasattr(value, "numel") and value.dim() > 1 and value.numel() == numel:
        return value.reshape(-1)
    return value


def _unflat(value, numel: int, shape):
    if isinstance(value, (list, tuple)):
        return type(value)(_unflat(v, numel, shape) for v in value)
    if hasattr(value, "numel") and value.dim() == 1 and value.numel() == numel:
        return value.view(shape)
    return value


def fusable(fn: Callable) -> Callable:
    """Run elementwise `fn` compiled (dynamic shapes) when its first tensor argument is large.

    Chunk-sized tensor arguments are passed flattened and results shaped back, so a kernel is
    compiled once per function rather than once per tensor rank or shape coincidence.
    """
    compiled = None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal compiled
        first = _first_tensor(args)
        if not _state["enabled"] or first is None or first.numel() < MIN_ENTRIES:
            return fn(*args, **kwargs)
        if compiled is None:
            import torch

            compiled = torch.compile(fn, dynamic=True)
        numel, shape = first.numel(), first.shape
        try:
            out = compiled(*_flat(args, numel), **kwargs)
        except Exception:  # no compiler / unsupported platform: eager gives the same answer
            _state["enabled"] = False
            return fn(*args, **kwargs)
        return _unflat(out, numel, shape)

    return run
