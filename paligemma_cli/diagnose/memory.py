"""Peak GPU memory of a QLoRA training step, predicted from the model's config.

`estimate(config, setup)` is pure arithmetic over a PaliGemma `config.json` (or a preset):

- **weights**: every parameter of the model, enumerated with its transformers 5.x name
  (`layout`). A quantised `nn.Linear` weight stores what bitsandbytes stores (`nf4_bytes`:
  packed 4-bit values, one absmax per 64-block, with double quantisation those absmax as uint8
  plus an fp32 absmax per 256 of them, the offset, and the 16- and 256-entry code books); the
  skipped modules (`QUANT_SKIP_MODULES`), embeddings, norms, biases and the patch conv stay in
  the load dtype. `prepare_model_for_kbit_training` then casts those to fp32: its own row.
- **LoRA**: r * (in + out) for each Linear whose name `lora_target_regex` full-matches (what
  peft counts), fp32; gradients the same size; AdamW two fp32 states, 8-bit AdamW two uint8
  states plus an fp32 absmax per 256 values (tensors under 4096 values stay 32-bit).
- **activations**: bytes kept per token, calibrated against allocation peaks measured with the
  PyTorch profiler on CPU (see docs/memory.md): per decoder layer a*h + b*I + c*q + d*kv plus
  5 bytes per input feature of each LoRA-wrapped Linear (dropout output and mask) and 4*r,
  over all B x S tokens (image tokens included). The training loss (`model.loss.answer_loss`)
  takes logits for the last K positions only, K = the longest answer of the batch + 1
  (`TrainSetup.answer_tokens`, at most max_length): 12 bytes per vocab entry per kept row
  (fp32 log-softmax output and two gradients; 16 with Gemma 2's soft-capping) at the start of
  the backward pass, B x K x vocab in all. With gradient checkpointing only the layer inputs
  stay and the peak is the larger of that logits moment and the recompute of one layer (the
  latter for PaliGemma at every resolution, unless answers are long).
- **overhead**: the CUDA context and cuBLAS workspace (not seen by torch's allocator) and a
  share of allocator fragmentation.

`fit` answers which batch size / accumulation fits a card; `diagnose.measure` runs real steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paligemma_cli.model.load import QUANT_SKIP_MODULES, lora_target_regex
from paligemma_cli.model.presets import RESOLUTIONS, preset_config, preset_names
from paligemma_cli.errors import PgmError

GiB = 1024 ** 3
MiB = 1024 ** 2
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK, NESTED_BLOCK = 64, 256
NF4_CODE, NESTED_CODE, OFFSET = 16 * 4, 256 * 4, 4  # fp32 code books and the nested offset
OPT8_BLOCK, OPT8_MIN_SIZE = 256, 4096  # bitsandbytes blockwise 8-bit optimizer states
CUDA_CONTEXT = 512 * MiB  # CUDA context + cuBLAS workspace, outside torch's allocator
FRAGMENTATION = 0.10  # caching-allocator slack, as a share of activations + gradients

# Bytes kept per token (see module docstring). "fp32": the k-bit prepared model (its embeddings
# and norms are upcast, so the residual stream is fp32) or --compute-dtype fp32; "half": an
# unquantised bf16/fp16 model. Calibrated on CPU with torch.profiler (docs/memory.md).
# The logits terms count per kept logit row (B x K, model.loss): "logits" per vocab entry (fp32
# log-softmax output, its gradient and the gradient of its input), "softcap" Gemma 2's tanh
# output. The logits phase also holds per token "logits_ckpt" x h per layer (the checkpointed
# layer inputs) and "logits_h" x h, plus "mask" bytes per B x S^2 (fitted; the attention masks).
ACT = {
    "fp32": dict(h=19, I=15, q=11, kv=8, logits=12, ckpt=12, bwd_I=6, extra_h=4, extra_h_gc=16,
                 softcap=4, scores=8, logits_ckpt=4, logits_h=4, mask=6),
    "half": dict(h=19, I=9, q=7, kv=4, logits=12, ckpt=12, bwd_I=8, extra_h=4, extra_h_gc=12,
                 softcap=4, scores=6, logits_ckpt=2, logits_h=0, mask=6),
}
LORA_ACT_PER_IN, LORA_ACT_PER_R = 5, 4  # dropout output (fp32) + mask per input feature; the A output


@dataclass(frozen=True)
class TrainSetup:
    """The settings the estimate depends on (the defaults are `pgm train`'s)."""

    batch_size: int = 4
    max_length: int = 64
    quantization: str = "4bit"
    compute_dtype: str = "bf16"
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("language",)
    gradient_checkpointing: bool = True
    optimizer: str = "adamw"
    resolution: int | None = None  # None: the checkpoint's own image size
    # K, the positions the loss takes logits for (model.loss): the longest answer of a batch in
    # tokens (EOS included) + 1. None: max_length, the most the collator lets an answer take.
    answer_tokens: int | None = None

    @property
    def keep(self) -> int:
        """K, bounded by max_length (the collator cuts answers to fit the text budget)."""
        return max(1, min(self.answer_tokens or self.max_length, self.max_length))


@dataclass(frozen=True)
class Param:
    """One parameter tensor, named as in transformers 5.x."""

    name: str
    shape: tuple[int, ...]
    linear: bool = False  # the weight of an nn.Linear: quantisable and LoRA-targetable

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Estimate:
    """Peak memory of one training step, by part (bytes)."""

    weights_quantized: int
    weights_unquantized: int
    kbit_upcast: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    params: int
    lora_params: int
    image_tokens: int
    seq_len: int
    answer_positions: int  # K: rows of logits the loss computes per example
    logits: int  # the logits' part of the activations (B x K x vocab), for the record
    setup: TrainSetup

    @property
    def weights(self) -> int:
        return self.weights_quantized + self.weights_unquantized

    @property
    def total(self) -> int:
        return (self.weights + self.kbit_upcast + self.lora + self.gradients + self.optimizer
                + self.activations + self.overhead)

    def rows(self) -> list[tuple[str, int, str]]:
        s = self.setup
        quant = {"4bit": "NF4 + double-quant constants", "8bit": "int8 + row scales", "none": "not quantised"}
        rows = [
            (f"base weights, {s.quantization}", self.weights_quantized, quant[s.quantization]),
            (f"base weights, {s.compute_dtype}", self.weights_unquantized,
             "embeddings, norms, biases, patch conv, projector"),
            ("fp32 upcast (k-bit prep)", self.kbit_upcast, "prepare_model_for_kbit_training"),
            ("LoRA parameters", self.lora, f"{self.lora_params:,} params, fp32"),
            ("gradients", self.gradients, "LoRA only, fp32"),
            ("optimizer states", self.optimizer, s.optimizer),
            ("activations", self.activations,
             f"B={s.batch_size} x {self.seq_len} tokens ({self.image_tokens} image), logits for the "
             f"last {self.answer_positions}, checkpointing {'on' if s.gradient_checkpointing else 'off'}"),
            ("CUDA context + allocator", self.overhead, f"{CUDA_CONTEXT // MiB} MiB + {FRAGMENTATION:.0%}"),
        ]
        return [r for r in rows if r[1] or r[0].startswith("base")]

    def to_dict(self) -> dict[str, Any]:
        return {"setup": dataclasses.asdict(self.setup),
                "parts": {name: value for name, value, _ in self.rows()},
                "total": self.total, "params": self.params, "lora_params": self.lora_params,
                "image_tokens": self.image_tokens, "seq_len": self.seq_len,
                "answer_positions": self.answer_positions, "logits": self.logits}


# --- config -------------------------------------------------------------------------------

def load_config(model_path: str, *, required: bool = True) -> dict | None:
    """config.json of a local model / 'tiny', a shipped preset, or the HF cache's copy."""
    from paligemma_cli.model.tiny import ensure_tiny, is_tiny

    if is_tiny(model_path):
        return json.loads((ensure_tiny(model_path) / "config.json").read_text())
    path = Path(model_path).expanduser()
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())
    preset = preset_config(model_path)
    if preset is not None:
        return preset
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_path, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except (ValueError, OSError):  # not a valid repo id (HFValidationError), unreadable cache: no config
        cached = None
    if not required:
        return None
    raise PgmError(f"--model-path {model_path}: no config.json there and no preset for it.",
                   "Give a local model folder, 'tiny', or one of: " + ", ".join(preset_names()) + ".")


def _text(config: dict) -> dict:
    text = dict(config.get("text_config") or {})
    text.setdefault("model_type", "gemma")
    text.setdefault("hidden_size", 2048)
    text.setdefault("num_attention_heads", 8)
    text.setdefault("head_dim", 256)
    text.setdefault("num_key_value_heads", text["num_attention_heads"])
    text.setdefault("vocab_size", config.get("vocab_size", 257216))
    return text


def _vision(config: dict, resolution: int | None = None) -> dict:
    vision = dict(config.get("vision_config") or {})
    vision.setdefault("hidden_size", 1152)
    vision.setdefault("patch_size", 14)
    vision.setdefault("image_size", 224)
    vision.setdefault("num_channels", 3)
    if resolution:
        vision["image_size"] = resolution
    return vision


def image_tokens(config: dict, resolution: int | None = None) -> int:
    """(resolution / patch)^2: 256 at 224 px, 1024 at 448, 4096 at 896."""
    vision = _vision(config, resolution)
    return (vision["image_size"] // vision["patch_size"]) ** 2


def layout(config: dict, resolution: int | None = None) -> list[Param]:
    """Every parameter of PaliGemma (1 or 2) for `config`, with transformers 5.x names."""
    vision, text = _vision(config, resolution), _text(config)
    vh, vi = vision["hidden_size"], vision["intermediate_size"]
    patch, channels = vision["patch_size"], vision["num_channels"]
    params: list[Param] = []

    def linear(prefix: str, out_f: int, in_f: int, bias: bool) -> None:
        params.append(Param(f"{prefix}.weight", (out_f, in_f), linear=True))
        if bias:
            params.append(Param(f"{prefix}.bias", (out_f,)))

    def norm(prefix: str, dim: int, bias: bool) -> None:
        params.append(Param(f"{prefix}.weight", (dim,)))
        if bias:
            params.append(Param(f"{prefix}.bias", (dim,)))

    v = "model.vision_tower"
    params.append(Param(f"{v}.embeddings.patch_embedding.weight", (vh, channels, patch, patch)))
    params.append(Param(f"{v}.embeddings.patch_embedding.bias", (vh,)))
    params.append(Param(f"{v}.embeddings.position_embedding.weight", (image_tokens(config, resolution), vh)))
    for i in range(vision["num_hidden_layers"]):
        layer = f"{v}.encoder.layers.{i}"
        norm(f"{layer}.layer_norm1", vh, True)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{layer}.self_attn.{proj}", vh, vh, True)
        norm(f"{layer}.layer_norm2", vh, True)
        linear(f"{layer}.mlp.fc1", vi, vh, True)
        linear(f"{layer}.mlp.fc2", vh, vi, True)
    norm(f"{v}.post_layernorm", vh, True)
    if vision.get("vision_use_head", False):
        head = f"{v}.head"
        params.append(Param(f"{head}.probe", (1, 1, vh)))
        params.append(Param(f"{head}.attention.in_proj_weight", (3 * vh, vh)))
        params.append(Param(f"{head}.attention.in_proj_bias", (3 * vh,)))
        linear(f"{head}.attention.out_proj", vh, vh, True)
        norm(f"{head}.layernorm", vh, True)
        linear(f"{head}.mlp.fc1", vi, vh, True)
        linear(f"{head}.mlp.fc2", vh, vi, True)

    h, inter = text["hidden_size"], text["intermediate_size"]
    q_dim = text["num_attention_heads"] * text["head_dim"]
    kv_dim = text["num_key_value_heads"] * text["head_dim"]
    bias = bool(text.get("attention_bias", False))
    linear("model.multi_modal_projector.linear", config.get("projection_dim", h), vh, True)
    t = "model.language_model"
    params.append(Param(f"{t}.embed_tokens.weight", (text["vocab_size"], h)))
    gemma2 = text["model_type"] == "gemma2"
    for i in range(text["num_hidden_layers"]):
        layer = f"{t}.layers.{i}"
        linear(f"{layer}.self_attn.q_proj", q_dim, h, bias)
        linear(f"{layer}.self_attn.k_proj", kv_dim, h, bias)
        linear(f"{layer}.self_attn.v_proj", kv_dim, h, bias)
        linear(f"{layer}.self_attn.o_proj", h, q_dim, bias)
        linear(f"{layer}.mlp.gate_proj", inter, h, False)
        linear(f"{layer}.mlp.up_proj", inter, h, False)
        linear(f"{layer}.mlp.down_proj", h, inter, False)
        norms = ["input_layernorm", "post_attention_layernorm"]
        if gemma2:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
        for n in norms:
            norm(f"{layer}.{n}", h, False)
    norm(f"{t}.norm", h, False)
    tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    if not tied:
        linear("lm_head", text["vocab_size"], h, False)
    return params


# --- storage -------------------------------------------------------------------------------

def nf4_bytes(numel: int, double_quant: bool = True) -> int:
    """What bitsandbytes keeps for one 4-bit weight: packed data plus its QuantState tensors."""
    blocks = -(-numel // NF4_BLOCK)
    packed = -(-numel // 2)
    if not double_quant:
        return packed + blocks * 4 + NF4_CODE
    nested_blocks = -(-blocks // NESTED_BLOCK)
    return packed + blocks + NF4_CODE + OFFSET + nested_blocks * 4 + NESTED_CODE


def int8_bytes(out_f: int, in_f: int) -> int:
    """LLM.int8 weight: int8 values plus one fp32 scale per output row (SCB)."""
    return out_f * in_f + out_f * 4


def is_quantized(param: Param, quantization: str) -> bool:
    if quantization == "none" or not param.linear:
        return False
    return not any(param.module == s or param.module.startswith(s + ".") for s in QUANT_SKIP_MODULES)


def weight_bytes(params: list[Param], setup: TrainSetup) -> tuple[int, int]:
    """(bytes of quantised Linear weights, bytes of everything kept in the load dtype)."""
    load = DTYPE_BYTES[setup.compute_dtype]
    quantized = unquantized = 0
    for p in params:
        if is_quantized(p, setup.quantization):
            quantized += nf4_bytes(p.numel) if setup.quantization == "4bit" else int8_bytes(*p.shape)
        else:
            unquantized += p.numel * load
    return quantized, unquantized


def lora_modules(params: list[Param], targets: tuple[str, ...]) -> list[Param]:
    """The Linear weights peft wraps: the modules `lora_target_regex` full-matches."""
    regex = re.compile(lora_target_regex(tuple(targets)))
    return [p for p in params if p.linear and regex.fullmatch(p.module)]


def lora_param_count(config: dict, targets: tuple[str, ...], rank: int) -> int:
    return sum(rank * (p.shape[0] + p.shape[1]) for p in lora_modules(layout(config), targets))


def optimizer_bytes(lora: list[int], optimizer: str) -> int:
    """AdamW: two fp32 states; bitsandbytes 8-bit: two uint8 states + fp32 absmax per 256."""
    total = 0
    for numel in lora:
        if optimizer == "adamw" or numel < OPT8_MIN_SIZE:
            total += 8 * numel
        else:
            total += 2 * (numel + 4 * -(-numel // OPT8_BLOCK))
    return total


# --- activations -----------------------------------------------------------------------------

def _stream(setup: TrainSetup) -> str:
    return "fp32" if setup.quantization != "none" or setup.compute_dtype == "fp32" else "half"


def _lora_act(modules: list[Param], rank: int) -> dict[str, int]:
    """Per layer prefix: bytes per token added by the LoRA wrappers in that layer."""
    out: dict[str, int] = {}
    for p in modules:
        key = re.sub(r"\.(self_attn|mlp)\..*$", "", p.module)
        out[key] = out.get(key, 0) + LORA_ACT_PER_IN * p.shape[1] + LORA_ACT_PER_R * rank
    return out


def activation_bytes(config: dict, setup: TrainSetup) -> int:
    """Activation memory at the step's peak (see the module docstring for the model)."""
    text, vision = _text(config), _vision(config, setup.resolution)
    c = ACT[_stream(setup)]
    n_img = image_tokens(config, setup.resolution)
    seq = n_img + setup.max_length
    tokens = setup.batch_size * seq
    img_tokens = setup.batch_size * n_img
    h, inter = text["hidden_size"], text["intermediate_size"]
    heads = text["num_attention_heads"]
    q_dim, kv_dim = heads * text["head_dim"], text["num_key_value_heads"] * text["head_dim"]
    gemma2 = text["model_type"] == "gemma2"
    lora = _lora_act(lora_modules(layout(config, setup.resolution), setup.lora_targets), setup.lora_rank)

    # Text decoder, per token of one layer (Gemma 2: two more norms, eager attention scores).
    text_layer = c["h"] * h + c["I"] * inter + c["q"] * q_dim + c["kv"] * kv_dim
    if gemma2:
        text_layer += 8 * h + c["scores"] * heads * seq
    text_lora = [lora.get(f"model.language_model.layers.{i}", 0) for i in range(text["num_hidden_layers"])]
    logits = logits_bytes(config, setup)  # B x K rows: model.loss asks for the last K positions only
    # The vision tower keeps activations only when LoRA sits in it (its input needs no grad).
    vh, vi = vision["hidden_size"], vision["intermediate_size"]
    vision_lora = [lora.get(f"model.vision_tower.encoder.layers.{i}", 0)
                   for i in range(vision["num_hidden_layers"])]
    vision_layer = c["h"] * vh + c["I"] * vi + c["q"] * vh + c["kv"] * vh
    vision_on = any(vision_lora)

    if not setup.gradient_checkpointing:
        per_token = sum(text_layer + x for x in text_lora) + c["extra_h"] * h
        vision_part = sum(vision_layer + x for x in vision_lora) if vision_on else 0
        return tokens * per_token + logits + img_tokens * vision_part
    # With checkpointing the peak is the larger of the start of the backward pass (the logits'
    # gradients beside the checkpointed layer inputs) and the recompute of one layer.
    logits_phase = (logits + tokens * (len(text_lora) * c["logits_ckpt"] * h + c["logits_h"] * h)
                    + c["mask"] * setup.batch_size * seq * seq)
    kept = tokens * (len(text_lora) * c["ckpt"] * h + c["extra_h_gc"] * h)
    kept += img_tokens * len(vision_lora) * c["ckpt"] * vh if vision_on else 0
    layer_phase = tokens * (text_layer + c["bwd_I"] * inter + max(text_lora, default=0))
    vision_phase = img_tokens * (vision_layer + max(vision_lora, default=0)) if vision_on else 0
    return max(logits_phase, kept + max(layer_phase, vision_phase))


def logits_bytes(config: dict, setup: TrainSetup) -> int:
    """The logits' share of the activations: B x K x vocab x bytes per entry (model.loss)."""
    text = _text(config)
    c = ACT[_stream(setup)]
    per_entry = c["logits"] + (c["softcap"] if text.get("final_logit_softcapping") else 0)
    return setup.batch_size * setup.keep * per_entry * text["vocab_size"]


# --- the estimate --------------------------------------------------------------------------

def estimate(config: dict, setup: TrainSetup) -> Estimate:
    """Peak memory of a training step for `config` under `setup` (pure arithmetic)."""
    if setup.compute_dtype not in DTYPE_BYTES:
        raise PgmError(f"--compute-dtype {setup.compute_dtype} is not one of bf16, fp16, fp32.")
    params = layout(config, setup.resolution)
    quantized, unquantized = weight_bytes(params, setup)
    load = DTYPE_BYTES[setup.compute_dtype]
    upcast = 0
    if setup.quantization != "none" and load < 4:
        upcast = sum(p.numel for p in params if not is_quantized(p, setup.quantization)) * (4 - load)
    modules = lora_modules(params, setup.lora_targets)
    lora_sizes = [n for p in modules for n in (setup.lora_rank * p.shape[1], setup.lora_rank * p.shape[0])]
    lora_count = sum(lora_sizes)
    acts = activation_bytes(config, setup)
    grads = 4 * lora_count
    return Estimate(
        weights_quantized=quantized, weights_unquantized=unquantized, kbit_upcast=upcast,
        lora=4 * lora_count, gradients=grads, optimizer=optimizer_bytes(lora_sizes, setup.optimizer),
        activations=acts, overhead=CUDA_CONTEXT + int(FRAGMENTATION * (acts + grads)),
        params=sum(p.numel for p in params), lora_params=lora_count,
        image_tokens=image_tokens(config, setup.resolution),
        seq_len=image_tokens(config, setup.resolution) + setup.max_length,
        answer_positions=setup.keep, logits=logits_bytes(config, setup), setup=setup)


def download_bytes(config: dict) -> int:
    """Size of the hub checkpoint (safetensors in the dtype the repo ships)."""
    dtype = config.get("torch_dtype") or _text(config).get("torch_dtype") or "float32"
    return sum(p.numel for p in layout(config)) * DTYPE_BYTES.get(str(dtype), 4)


def merged_bytes(config: dict) -> int:
    """A merged bf16 model written by `pgm merge`."""
    return sum(p.numel for p in layout(config)) * 2


def output_bytes(config: dict, setup: TrainSetup, checkpoints: int = 2) -> int:
    """Final adapter plus `checkpoints` checkpoints (adapter + optimizer states) in --output-dir."""
    lora = 4 * lora_param_count(config, setup.lora_targets, setup.lora_rank)
    return lora + checkpoints * (lora + 2 * lora)


# --- what fits -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    fits: bool
    batch_size: int
    gradient_accumulation_steps: int
    estimate: Estimate
    model_path: str | None = None  # a lower-resolution checkpoint, when that is what it takes
    gradient_checkpointing_changed: bool = False
    reason: str = ""

    def flags(self) -> str:
        out = (f"--batch-size {self.batch_size} "
               f"--gradient-accumulation-steps {self.gradient_accumulation_steps}")
        if self.gradient_checkpointing_changed:
            out += " --gradient-checkpointing"
        if self.model_path:
            out = f"--model-path {self.model_path} " + out
        return out


def _batch_sizes(start: int) -> list[int]:
    sizes, b = [start], start
    while b > 1:
        b = b // 2 if b & (b - 1) == 0 else 2 ** (b.bit_length() - 1)
        sizes.append(b)
    return sizes


def fit(config: dict, setup: TrainSetup, capacity: int, effective_batch: int | None = None) -> Plan:
    """The largest batch size (<= setup's) that fits `capacity` bytes, keeping the effective batch.

    Falls back to turning gradient checkpointing on, then to a lower image resolution.
    """
    effective = effective_batch or setup.batch_size
    attempts: list[tuple[TrainSetup, str | None, bool]] = [(setup, None, False)]
    if not setup.gradient_checkpointing:
        attempts.append((dataclasses.replace(setup, gradient_checkpointing=True), None, True))
    current = _vision(config, setup.resolution)["image_size"]
    preset = config.get("_preset", "")
    for res in sorted((r for r in RESOLUTIONS if r < current), reverse=True):
        lower = re.sub(r"-(224|448|896)$", f"-{res}", preset) if preset else f"a {res} px checkpoint"
        attempts.append((dataclasses.replace(setup, resolution=res, gradient_checkpointing=True),
                         lower, not setup.gradient_checkpointing))
    for trial, model_path, gc_changed in attempts:
        for bs in _batch_sizes(setup.batch_size):
            est = estimate(config, dataclasses.replace(trial, batch_size=bs))
            if est.total <= capacity:
                return Plan(True, bs, max(1, -(-effective // bs)), est, model_path, gc_changed)
    smallest = estimate(config, dataclasses.replace(attempts[-1][0], batch_size=1))
    return Plan(False, 1, effective, smallest, reason=(
        f"Even batch size 1 needs ~{smallest.total / GiB:.1f} GiB, more than the "
        f"{capacity / GiB:.1f} GiB available."))


def parse_size(text: str) -> int:
    """'24GB', '24 GiB', '80g', '16000MB' -> bytes (GB and GiB both taken as GiB, as nvidia-smi shows)."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([GgMm])?(i?[Bb])?\s*", text or "")
    if not match:
        raise PgmError(f"--gpu-memory {text!r} is not a size.", "Write it like 24GB or 80GiB.")
    value = float(match.group(1))
    unit = (match.group(2) or "G").upper()
    return int(value * (GiB if unit == "G" else MiB))
