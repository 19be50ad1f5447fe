"""Merge inputs read tensor by tensor: full model folders and PEFT LoRA adapters.

Each input yields, per tensor of the base, the task vector tau = theta - theta_base for a range of
rows, computed when asked: a full model reads the rows (safetensors `get_slice`) and subtracts the
base; an adapter computes B[rows]·A·scale for the modules it targets. A `safe_open` handle is opened
per read and closed at once, because the pages of a memory map stay in the process (and in its
peak RSS) for as long as the map lives.

Checkpoints name tensors `language_model.model.layers.N...` (the layout transformers 5 still
writes); PEFT names modules as transformers 5 builds them, `model.language_model.layers.N...`.
`module_name` maps the first to the second so the two can be matched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paligemma_cli.errors import PgmError

# checkpoint prefix -> transformers 5 module prefix (PaliGemma 1 and 2)
_CHECKPOINT_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
_PEFT_PREFIX = "base_model.model."
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors")
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def module_name(key: str) -> str:
    """A checkpoint key in transformers 5 module spelling (keys already in it are unchanged)."""
    for old, new in _CHECKPOINT_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def read_rows(file: Path, key: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """One tensor, or rows [a, b) of it, read with a short-lived `safe_open` handle."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        if rows is None:
            return f.get_tensor(key)
        return f.get_slice(key)[rows[0]:rows[1]]


def local_folder(spec: str, flag: str) -> Path:
    """A local folder for a --base-model / --model value: 'tiny', a folder, or a hub id (cache)."""
    from paligemma_cli.model.tiny import ensure_tiny, is_tiny

    if is_tiny(spec):
        return ensure_tiny(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise PgmError(f"{flag} {spec} does not exist.",
                       "Give a model or adapter folder, a hub id, or 'tiny'.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=HUB_FILES))
    except Exception as exc:  # offline, gated, missing: one line with the fix
        raise PgmError(f"{flag} {spec}: not a local folder, and the hub gave {type(exc).__name__}.",
                       "Download it once online (`hf download <id>`), or pass a local folder.") from None


def _read_json(path: Path, flag: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PgmError(f"{flag}: cannot read {path}: {exc}.", "Is the folder complete?") from None


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: BF16, F32, ...
    file: Path


def safetensors_header(folder: Path, flag: str) -> dict[str, TensorInfo]:
    """Name -> shape, dtype, file of every tensor of a model folder, from the headers only."""
    from safetensors import safe_open

    index = folder / _WEIGHT_FILES[0]
    if index.exists():
        files = sorted(set(_read_json(index, flag).get("weight_map", {}).values()))
    elif (folder / _WEIGHT_FILES[1]).exists():
        files = [_WEIGHT_FILES[1]]
    else:
        other = sorted(p.name for p in folder.glob("*.bin")) or ["no weights"]
        raise PgmError(f"{flag} {folder} has no model.safetensors (found: {', '.join(other)}).",
                       "pgm merge reads safetensors; re-save with save_pretrained().")
    header: dict[str, TensorInfo] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                header[key] = TensorInfo(tuple(piece.get_shape()), piece.get_dtype(), folder / name)
    return header


def architecture(config: dict) -> str:
    """A short description of what a config.json builds, e.g. 'paligemma (gemma, 18 layers)'."""
    text = config.get("text_config") or {}
    layers = text.get("num_hidden_layers", "?")
    return f"{config.get('model_type', '?')} ({text.get('model_type', 'gemma')}, {layers} layers, " \
           f"hidden {text.get('hidden_size', '?')})"


class FullModel:
    """A model folder (save_pretrained layout, sharded or not); tau = theta - theta_base."""

    kind = "model"

    def __init__(self, spec: str, folder: Path, flag: str):
        self.spec, self.folder, self.flag = spec, folder, flag
        self.config = _read_json(folder / "config.json", flag) if (folder / "config.json").exists() else {}
        self.tensors = safetensors_header(folder, flag)
        # matched to the base by module name, so either checkpoint spelling works
        self.by_module = {module_name(k): k for k in self.tensors}

    def touches(self, key: str) -> bool:
        return True

    def rank_bound(self, key: str) -> int | None:
        """An upper bound on the rank of tau for `key` when one is known (never, for a full model)."""
        return None

    def delta(self, key: str, rows: tuple[int, int] | None, base: torch.Tensor,
              base_raw: torch.Tensor) -> torch.Tensor | None:
        """tau for `rows` of the base's tensor `key` (fp32), or None where it equals the base."""
        own = self.by_module[module_name(key)]
        raw = read_rows(self.tensors[own].file, own, rows)
        if raw.dtype == base_raw.dtype and torch.equal(raw, base_raw):
            return None
        return raw.float() - base


@dataclass
class LoraModule:
    a_key: str
    b_key: str
    scale: float
    embedding: bool = False
    fan_in_fan_out: bool = False
    rank: int = 0


@dataclass
class Adapter:
    """A PEFT LoRA adapter folder; tau = B·A·scale on each target module."""

    spec: str
    folder: Path
    flag: str
    config: dict
    file: Path
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # file key -> shape
    modules: dict[str, LoraModule] = field(default_factory=dict)  # module name -> factors
    full: dict[str, str] = field(default_factory=dict)  # weight name -> key (modules_to_save, bias)
    kind = "adapter"

    def touches(self, key: str) -> bool:
        name = module_name(key)
        return name in self.full or name.removesuffix(".weight") in self.modules

    def rank_bound(self, key: str) -> int | None:
        """r for a LoRA module (tau = B·A·scale has rank <= r), 0 where the adapter does not touch
        the tensor, None for a whole weight it replaces (modules_to_save)."""
        if module_name(key) in self.full:
            return None
        lora = self.module_for(key)
        return 0 if lora is None else lora.rank

    def module_for(self, key: str) -> LoraModule | None:
        name = module_name(key)
        return self.modules.get(name.removesuffix(".weight")) if name.endswith(".weight") else None

    def delta(self, key: str, rows: tuple[int, int] | None, base: torch.Tensor,
              base_raw: torch.Tensor) -> torch.Tensor | None:
        name = module_name(key)
        if name in self.full:
            return read_rows(self.file, self.full[name], rows).float() - base
        lora = self.module_for(key)
        if lora is None:
            return None
        a = read_rows(self.file, lora.a_key).float()
        b = read_rows(self.file, lora.b_key).float()
        if lora.embedding or lora.fan_in_fan_out:  # delta = (B·A)^T: rows of delta = columns of A
            a = a if rows is None else a[:, rows[0]:rows[1]]
            return (b @ a).T.mul_(lora.scale).contiguous()
        b = b if rows is None else b[rows[0]:rows[1]]
        return (b @ a).mul_(lora.scale)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def load_adapter(spec: str, folder: Path, flag: str) -> Adapter:
    """Read an adapter's config and the names/shapes of its factors (not the values)."""
    from safetensors import safe_open

    config = _read_json(folder / "adapter_config.json", flag)
    if config.get("peft_type", "LORA") != "LORA":
        raise PgmError(f"{flag} {spec} is a {config.get('peft_type')} adapter.", "pgm merge takes LoRA adapters.")
    for option in ("use_dora", "lora_bias"):
        if config.get(option):
            raise PgmError(f"{flag} {spec} uses {option}, whose weight change is not B·A·scale.",
                           "Merge it into its base first (`merge_and_unload`) and pass the full model.")
    file = folder / "adapter_model.safetensors"
    if not file.exists():
        raise PgmError(f"{flag} {spec} has no adapter_model.safetensors.",
                       "pgm merge reads safetensors adapters (PEFT's default since 0.6).")
    with safe_open(str(file), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    adapter = Adapter(spec, folder, flag, config, file, shapes)
    for key in shapes:
        inner = module_name(key.removeprefix(_PEFT_PREFIX))
        match = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_embedding_A)", inner)
        if match:
            module = match.group(1)
            embedding = match.group(2) == "lora_embedding_A"
            b_key = key.replace("lora_embedding_A", "lora_embedding_B") if embedding \
                else key.replace("lora_A.weight", "lora_B.weight")
            if b_key not in shapes:
                raise PgmError(f"{flag} {spec}: {key} has no matching lora_B.", "The adapter file is incomplete.")
            rank = shapes[key][0]
            alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
            scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
            adapter.modules[module] = LoraModule(key, b_key, scale, embedding,
                                                 bool(config.get("fan_in_fan_out")), rank)
        elif re.search(r"\.lora_(B\.weight|embedding_B)$", inner):
            continue
        elif "lora_" in inner or "." not in inner:
            raise PgmError(f"{flag} {spec} holds {key}, which pgm merge cannot turn into a weight change.",
                           "Merge the adapter into its base first and pass the full model.")
        else:  # modules_to_save / trained biases: full replacement weights
            adapter.full[inner] = key
    if not adapter.modules and not adapter.full:
        raise PgmError(f"{flag} {spec} holds no LoRA weights.", "Is it the right folder?")
    return adapter


def open_input(spec: str, flag: str):
    """A FullModel or an Adapter for one --model value (decided by adapter_config.json)."""
    folder = local_folder(spec, flag)
    if (folder / "adapter_config.json").exists():
        return load_adapter(spec, folder, flag)
    if not (folder / "config.json").exists():
        raise PgmError(f"{flag} {spec} has neither config.json nor adapter_config.json.",
                       "Point it at a model folder (save_pretrained) or a PEFT adapter folder.")
    return FullModel(spec, folder, flag)
