"""Up-front checks that every input fits the base, from config files and safetensors headers only.

A mismatch is found before a byte is written and named precisely: the first tensor (in the
base's order) that is missing, extra, or shaped differently, or the adapter module that does not
fit, or the base an adapter was trained on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from paligemma_cli.errors import PgmError
from paligemma_cli.merge.sources import Adapter, FullModel, TensorInfo, architecture, module_name


def _first_difference(base: dict[str, TensorInfo], other: FullModel) -> str | None:
    for key, info in base.items():
        own = other.by_module.get(module_name(key))
        if own is None:
            return f"{key} is missing"
        if other.tensors[own].shape != info.shape:
            return f"{key} has shape {list(other.tensors[own].shape)}, the base {list(info.shape)}"
    base_modules = {module_name(k) for k in base}
    for key in other.tensors:
        if module_name(key) not in base_modules:
            return f"{key} is not in the base"
    return None


def check_full_model(model: FullModel, base: dict[str, TensorInfo], base_config: dict) -> None:
    """Same architecture and the same tensor names and shapes as the base."""
    difference = _first_difference(base, model)
    if difference is None:
        return
    arch, base_arch = architecture(model.config), architecture(base_config)
    what = f"is {arch}, the base {base_arch}; " if arch != base_arch else ""
    raise PgmError(f"{model.flag} {model.spec} does not match --base-model: {what}first differing "
                   f"tensor: {difference}.",
                   "Merge only models fine-tuned from the same base.")


def _hub_id_of(folder: Path) -> str | None:
    """'org/name' for a folder inside the Hugging Face cache (models--org--name/snapshots/...)."""
    match = re.search(r"models--([^/]+)--([^/]+)/snapshots/", str(folder.resolve()) + "/")
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _same_base(recorded: str, base_spec: str, base_folder: Path) -> bool:
    from paligemma_cli.model.tiny import ensure_tiny, is_tiny

    if recorded == base_spec:
        return True
    recorded_path = ensure_tiny(recorded) if is_tiny(recorded) else Path(recorded).expanduser()
    if recorded_path.is_dir():
        return os.path.realpath(recorded_path) == os.path.realpath(base_folder)
    return recorded == _hub_id_of(base_folder)  # a hub id vs. that id's cached snapshot


def check_adapter(adapter: Adapter, base: dict[str, TensorInfo], base_spec: str,
                  base_folder: Path, check_base: bool = True) -> None:
    """The adapter was trained on --base-model, and every module it changes fits the base."""
    recorded = adapter.config.get("base_model_name_or_path")
    if check_base and recorded and not _same_base(recorded, base_spec, base_folder):
        raise PgmError(f"{adapter.flag} {adapter.spec} was trained on {recorded}, not on "
                       f"--base-model {base_spec}.",
                       f"Pass --base-model {recorded}, or --skip-base-check if {base_spec} is a copy of it.")
    by_module = {module_name(k): k for k in base}
    for module, lora in adapter.modules.items():
        key = by_module.get(module + ".weight")
        if key is None:
            raise PgmError(f"{adapter.flag} {adapter.spec} changes {module}, which the base does not have.",
                           "Was it trained on another model?")
        rank, n_in = adapter.shapes[lora.a_key]
        n_out, rank_b = adapter.shapes[lora.b_key]
        shape = (n_in, n_out) if lora.embedding or lora.fan_in_fan_out else (n_out, n_in)
        if rank != rank_b or shape != base[key].shape:
            raise PgmError(f"{adapter.flag} {adapter.spec}: {module} gives a change of shape "
                           f"{list(shape)}, the base's {key} is {list(base[key].shape)}.",
                           "Was it trained on another model?")
    for name, key in adapter.full.items():
        base_key = by_module.get(name)
        if base_key is None or base[base_key].shape != adapter.shapes[key]:
            raise PgmError(f"{adapter.flag} {adapter.spec} holds {key}, which does not fit the base.",
                           "Was it trained on another model?")
