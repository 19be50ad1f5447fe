"""Loading PaliGemma (1 or 2) for QLoRA: the one place that builds BitsAndBytesConfig and LoRA.

Every command that needs a model (train, eval, merge, memory-estimate --measure, doctor) goes
through `resolve_model_path`, `build_quantization_config`, `load_model` and `attach_lora`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from paligemma_cli.config import LoraConfig, ModelConfig
from paligemma_cli.model.tiny import ensure_tiny, is_tiny
from paligemma_cli.errors import PgmError

# Projections LoRA targets in each part of the model (module names of transformers 5.x).
LANGUAGE_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Left in the compute dtype under 4/8-bit: the projector is small and feeds every image token;
# lm_head is tied to the embeddings (the usual QLoRA choice). bitsandbytes matches these from the
# start of the full module name, so the projector needs its "model." prefix.
QUANT_SKIP_MODULES = ["model.multi_modal_projector", "lm_head"]


def lora_target_regex(parts: tuple[str, ...]) -> str:
    """A regex peft full-matches against module names; q/k/v also exist in SigLIP, hence anchors."""
    alternatives = []
    if "language" in parts:
        alternatives.append(r"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.("
                            + "|".join(LANGUAGE_PROJ) + ")")
    if "vision" in parts:
        alternatives.append(r"model\.vision_tower\..*\.layers\.\d+\.(self_attn|mlp)\.("
                            + "|".join(VISION_PROJ) + ")")
    if "projector" in parts:
        alternatives.append(r"model\.multi_modal_projector\.linear")
    return "(" + "|".join(alternatives) + ")"


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_compute_dtype(name: str):
    """'auto' = bf16 on CPU and on GPUs that support it, fp16 on older GPUs."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name != "auto":
        return table[name]
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build_quantization_config(cfg: ModelConfig):
    """The BitsAndBytesConfig for `cfg.quantization` (None for 'none').

    4bit is QLoRA's recipe: NF4 weights, double quantisation of the block constants, and the
    compute dtype passed as `bnb_4bit_compute_dtype` (a misspelt keyword is silently ignored by
    transformers, leaving fp32 compute: tests check the built object carries the dtype).
    """
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANT_SKIP_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=resolve_compute_dtype(cfg.compute_dtype),
        llm_int8_skip_modules=QUANT_SKIP_MODULES,
    )


def resolve_model_path(model_path: str) -> str:
    """'tiny'/'tiny-pg2' -> the built tiny model; a local folder is checked; else a hub id."""
    if is_tiny(model_path):
        return str(ensure_tiny(model_path))
    path = Path(model_path).expanduser()
    looks_local = path.exists() or model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise PgmError(f"--model-path {model_path} does not exist.",
                           "Give a model folder, a hub id such as google/paligemma-3b-pt-448, or 'tiny'.")
        missing = [n for n in ("config.json",) if not (path / n).exists()]
        if (path / "adapter_config.json").exists() and missing:
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            raise PgmError(f"--model-path {model_path} is a LoRA adapter, not a model.",
                           f"Use --model-path {base} --adapter {model_path}.")
        if missing:
            raise PgmError(f"--model-path {model_path} has no {', '.join(missing)}.",
                           "Point it at a folder written by save_pretrained (or `pgm merge`).")
        return str(path)
    return model_path


def _hub_error(model_path: str, exc: Exception) -> PgmError:
    """Turn the hub's failures into the fix the user needs (never echoing a token)."""
    text = f"{type(exc).__name__}: {exc}"
    if "401" in text or "403" in text or "gated" in text.lower() or "GatedRepo" in text:
        return PgmError(f"No access to the gated model {model_path}.",
                        "Accept its licence on huggingface.co, then `hf auth login` (or set HF_TOKEN).")
    if "offline" in text.lower() or "LocalEntryNotFound" in text or "connect" in text.lower():
        return PgmError(f"{model_path} is not in the local Hugging Face cache and the hub is unreachable.",
                        "Download it once online (`hf download <id>`), or pass a local folder.")
    if "RepositoryNotFound" in text or "404" in text or "not a valid model identifier" in text:
        return PgmError(f"--model-path {model_path}: no such model on the hub or on disk.",
                        "Check the id (e.g. google/paligemma-3b-pt-448) or the folder path.")
    return PgmError(f"Could not load {model_path}: {type(exc).__name__}.", str(exc).splitlines()[0][:200])


def load_processor(model_path: str, revision: str | None = None):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(resolve_model_path(model_path), revision=revision)
    except PgmError:
        raise
    except Exception as exc:  # hub / file errors become one line with the fix
        raise _hub_error(model_path, exc) from None


def load_model(cfg: ModelConfig, *, for_training: bool = True, state_dict: dict | None = None):
    """Load the base model, quantised per `cfg`, on the available device.

    `state_dict` (checkpoint tensor names -> tensors, e.g. a merge computed in memory) replaces the
    weights read from `cfg.model_path`'s files; everything else (config, dtype casts, quantisation)
    is exactly what loading a folder holding those tensors does.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(cfg.model_path)
    quant = build_quantization_config(cfg)
    dtype = resolve_compute_dtype(cfg.compute_dtype)
    kwargs: dict[str, Any] = {"revision": cfg.revision, "dtype": dtype}
    loader, source = AutoModelForImageTextToText, path
    if state_dict is not None:  # from_pretrained takes in-memory weights only without a name (so no Auto class)
        import transformers

        config = transformers.AutoConfig.from_pretrained(path, revision=cfg.revision)
        loader, source = getattr(transformers, config.architectures[0]), None
        kwargs.update(state_dict=state_dict, config=config)
    if quant is not None:
        kwargs["quantization_config"] = quant
        # Each data-parallel process keeps its quantised copy on its own GPU (accelerate sets
        # LOCAL_RANK); {"": 0} would put every copy on GPU 0.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local} if torch.cuda.is_available() else {"": "cpu"}
    try:
        model = loader.from_pretrained(source, **kwargs)
    except PgmError:
        raise
    except ImportError as exc:
        raise PgmError(f"Loading in {cfg.quantization} failed: {exc}.",
                       "Run `pgm doctor` to check bitsandbytes and CUDA.") from None
    except Exception as exc:
        raise _hub_error(cfg.model_path, exc) from None
    if quant is None and torch.cuda.is_available():
        model.to("cuda")
    if not for_training:
        model.eval()
    return model


def attach_lora(model, model_cfg: ModelConfig, lora_cfg: LoraConfig, seed: int = 0):
    """Prepare for (k-bit) training, turn on gradient checkpointing, and wrap with LoRA."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}
    if model_cfg.quantization != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs)
    elif model_cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.lora_rank, lora_alpha=lora_cfg.lora_alpha, lora_dropout=lora_cfg.lora_dropout,
        target_modules=lora_target_regex(lora_cfg.target_parts()), bias="none",
        task_type="CAUSAL_LM")
    # bitsandbytes repacks 4-bit weights into an inference-only CPU layout the first time a layer
    # runs in eval mode (e.g. generation during --eval-steps); training on the repacked weights
    # then fails. A model being trained keeps the trainable layout.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    torch.manual_seed(seed)  # LoRA A init is random: same seed, same adapter
    return get_peft_model(model, peft_cfg)


def check_adapter(adapter: Path) -> dict[str, Any]:
    """The adapter's config, or one line saying the folder is not an adapter."""
    path = Path(adapter) / "adapter_config.json"
    if not path.exists():
        raise PgmError(f"--adapter {adapter} has no adapter_config.json.",
                       "Point it at a pgm train output dir, a checkpoints/step-N folder or best/.")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise PgmError(f"{path} is not valid JSON.", "The adapter folder is damaged; use a checkpoint.") from None


def adapter_base_model(adapter: Path) -> str | None:
    """The base model an adapter was trained on: pgm's recorded --model-path, else PEFT's field."""
    run_config = Path(adapter) / "run_config.json"
    for candidate in (run_config, Path(adapter).parent.parent / "run_config.json"):  # a checkpoint's run
        if candidate.exists():
            try:
                return json.loads(candidate.read_text())["pgm_run"]["model_path"]
            except (ValueError, KeyError, TypeError):
                pass
    return check_adapter(adapter).get("base_model_name_or_path")


def load_for_inference(cfg: ModelConfig, adapter: Path | None = None):
    """Base model (quantised per cfg) with an optional LoRA adapter, in eval mode."""
    if adapter is not None:
        check_adapter(adapter)  # before the (slow) base model load
    model = load_model(cfg, for_training=False)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except (RuntimeError, ValueError) as exc:  # shapes or module names of another base
            raise _adapter_mismatch(adapter, cfg.model_path, exc) from None
    model.eval()
    return model


def _adapter_mismatch(adapter: Path, model_path: str, exc: Exception) -> PgmError:
    """One line for an adapter trained on another base: which tensor differs, and the base to use."""
    import re

    text = str(exc)
    size = re.search(r"size mismatch for (\S+?)(?:\.default)?\.weight: copying a param with shape "
                     r"torch\.Size\((\[.*?\])\) from checkpoint, the shape in current model is "
                     r"torch\.Size\((\[.*?\])\)", text)
    if size:
        why = f"{size.group(1).removeprefix('base_model.model.')} is {size.group(2)}, the model's {size.group(3)}"
    else:
        why = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
    base = check_adapter(adapter).get("base_model_name_or_path")
    trained = f" (it was trained on {base})" if base and base != model_path else ""
    hint = (f"Pass --model-path {base}, its base, or leave --model-path out." if trained
            else "Use the base model the adapter was trained on.")
    return PgmError(f"--adapter {adapter} does not fit --model-path {model_path}{trained}: {why}.", hint)
