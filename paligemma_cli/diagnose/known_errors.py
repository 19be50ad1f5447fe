"""`pgm doctor --error`: known error messages as data, matched against a pasted log.

`KNOWN_ERRORS` is the table (patterns, cause, fix); `diagnose_error` returns the diagnoses a
traceback or log contains. The out-of-memory fix is computed: the card's capacity is read from
PyTorch's message and `diagnose.memory.fit` says which --batch-size / accumulation fits it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from paligemma_cli.config import DEFAULT_MODEL, TrainConfig
from paligemma_cli.diagnose.doctor import CORENLP_JARS, CORENLP_URL, GiB, redact


@dataclass(frozen=True)
class Diagnosis:
    key: str
    title: str
    cause: str
    fix: str
    evidence: str = ""


@dataclass(frozen=True)
class KnownError:
    key: str
    title: str
    patterns: tuple[str, ...]
    cause: str
    fix: str
    flags: int = re.IGNORECASE


KNOWN_ERRORS: tuple[KnownError, ...] = (
    KnownError(
        "cuda-oom", "CUDA out of memory",
        (r"CUDA out of memory", r"OutOfMemoryError"),
        "The training step needs more GPU memory than the card has.",
        "{oom_fix}"),
    KnownError(
        "bnb-no-gpu", "bitsandbytes has no GPU support",
        (r"compiled without GPU support",),
        "bitsandbytes loaded its CPU library: a CPU-only torch, an old bitsandbytes, or CUDA "
        "libraries it cannot find.",
        "pip install -U 'bitsandbytes>=0.46' into the venv of a CUDA torch build; check with "
        "`python -m bitsandbytes` and `pgm doctor`."),
    KnownError(
        "bnb-cuda-setup", "bitsandbytes CUDA setup failed",
        (r"CUDA Setup failed despite GPU being available", r"No compatible (CUDA|ROCm) binary found",
         r"Could not find the bitsandbytes CUDA binary", r"bitsandbytes library load error",
         r"libbitsandbytes_cuda\d+\.so: cannot open"),
        "bitsandbytes cannot load a native library matching the torch CUDA version.",
        "Upgrade (pip install -U bitsandbytes); unset BNB_CUDA_VERSION if set; make sure the CUDA "
        "runtime of torch is found (`python -m bitsandbytes` lists what it tried)."),
    KnownError(
        "hub-403", "No access to a gated model (403)",
        (r"403 Client Error", r"not in the authorized list"),
        "Your token is valid, but its account has not been granted the model's licence.",
        "Open the model page on huggingface.co with the same account, accept the licence, wait "
        "for the grant, then retry (`pgm doctor --online` checks it)."),
    KnownError(
        "hub-401", "Not logged in to the Hugging Face hub (401)",
        (r"401 Client Error", r"Cannot access gated repo", r"must be authenticated",
         r"Invalid user token", r"Invalid credentials in Authorization header"),
        "The request carried no valid token, and PaliGemma repos are gated.",
        "Accept the licence on huggingface.co, then `hf auth login` (or export HF_TOKEN=...); "
        "`pgm doctor --online` verifies both."),
    KnownError(
        "token-type-ids", "token_type_ids missing",
        (r"Token type ids must be provided during training", r"`?token_type_ids`? is required"),
        "PaliGemma's prefix-LM mask comes from token_type_ids (0 prefix, 1 suffix); the batch "
        "did not carry them.",
        "Build training batches with processor(text=..., images=..., suffix=...) and keep "
        "token_type_ids (pgm's collator does; in HF Trainer set remove_unused_columns=False)."),
    KnownError(
        "missing-labels", "No labels, so no loss",
        (r"did not return a loss from the inputs",),
        "The batch had no `labels`: the processor only makes them when a `suffix` is given.",
        "Pass the answers as processor(..., suffix=answers); with HF Trainer also set "
        "remove_unused_columns=False."),
    KnownError(
        "nan-loss", "Loss became NaN",
        (r"'loss': nan", r"\bloss[ =:]+nan\b", r"grad_norm'?: nan", r"loss is nan"),
        "fp16 overflow (common on GPUs without bf16), a learning rate too high, or empty labels.",
        "Use --compute-dtype bf16 where the GPU supports it (else fp32), lower --learning-rate "
        "(e.g. 5e-5), keep --max-grad-norm 1.0, and check that every example has a suffix."),
    KnownError(
        "java-missing", "Java not found",
        (r"No such file or directory: 'java'", r"\bjava: (command )?not found"),
        "pycocoevalcap's PTB tokenizer and METEOR run Java (COCO captioning metrics).",
        "sudo apt-get install -y default-jre-headless (any Java >= 8 on PATH)."),
    KnownError(
        "spice-corenlp", "SPICE needs Stanford CoreNLP",
        (r"Downloading stanford-corenlp-3\.6\.0 for SPICE", r"get_stanford_models",
         r"stanford-corenlp-full-2015-12-09"),
        "SPICE downloads Stanford CoreNLP 3.6.0 on first use, and that download failed.",
        f"Download {CORENLP_URL} elsewhere and copy {' and '.join(CORENLP_JARS)} into "
        "pycocoevalcap/spice/lib/ (`pgm doctor` shows the folder)."),
    KnownError(
        "bnb-kwarg-typo", "BitsAndBytesConfig ignored a keyword",
        (r"Unused kwargs: \[[^\]]*'bnb_",),
        "A misspelt BitsAndBytesConfig keyword is dropped silently (e.g. bnb_4bit_compute_type "
        "instead of bnb_4bit_compute_dtype), leaving fp32 compute or no double quantisation.",
        "Spell it bnb_4bit_compute_dtype / bnb_4bit_use_double_quant / bnb_4bit_quant_type; pgm "
        "builds this config itself (--quantization, --compute-dtype)."),
    KnownError(
        "dtype-mismatch", "Input and weight dtypes differ",
        (r"Input type \(.*\) and (weight|bias) type \(.*\) should be the same",
         r"expected (mat1 and mat2|both inputs|scalar type).{0,40}(same dtype|dtype)"),
        "pixel_values (float32) reach a bf16/fp16 vision tower, or a module was cast alone.",
        "Cast the batch: pixel_values.to(model.dtype) (pgm's collator does); do not .half() "
        "parts of a quantised model."),
    KnownError(
        "no-bf16", "bf16 not supported here",
        (r"doesn't support bf16", r"Bfloat16 is only supported", r"bf16.*not supported"),
        "The GPU (compute < 8.0) or the device has no bf16.",
        "Use --compute-dtype fp16 on pre-Ampere GPUs (auto does this), fp32 on CPU if bf16 fails."),
)


def diagnose_error(text: str, *, model_path: str | None = None, batch_size: int | None = None,
                   gradient_accumulation_steps: int | None = None) -> list[Diagnosis]:
    """Match `text` (a traceback or log) against KNOWN_ERRORS; the fixes for what it contains."""
    found = []
    for known in KNOWN_ERRORS:
        for pattern in known.patterns:
            match = re.search(pattern, text, known.flags)
            if match:
                fix = known.fix
                if "{oom_fix}" in fix:
                    fix = oom_fix(text, model_path=model_path, batch_size=batch_size,
                                  gradient_accumulation_steps=gradient_accumulation_steps)
                found.append(Diagnosis(known.key, known.title, known.cause, redact(fix),
                                       redact(_line_of(text, match.start()))))
                break
    # A 403 message also says "Cannot access gated repo": report the more specific one only.
    keys = {d.key for d in found}
    if "hub-403" in keys:
        found = [d for d in found if d.key != "hub-401"]
    return found


def _line_of(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start:end if end != -1 else len(text)].strip()[:240]


_CAPACITY = (r"total capacity of ([\d.]+) (GiB|MiB)", r"([\d.]+) (GiB|MiB) total capacity",
             r"total capacty of ([\d.]+) (GiB|MiB)")


def gpu_capacity_from_log(text: str) -> int | None:
    """The card's total memory as PyTorch's OOM message states it, in bytes."""
    for pattern in _CAPACITY:
        match = re.search(pattern, text)
        if match:
            scale = GiB if match.group(2) == "GiB" else 1024 ** 2
            return int(float(match.group(1)) * scale)
    return None


def oom_fix(text: str, *, model_path: str | None = None, batch_size: int | None = None,
            gradient_accumulation_steps: int | None = None) -> str:
    """The concrete flags `memory-estimate` says fit the card named in the OOM message."""
    from paligemma_cli.diagnose import memory

    capacity = gpu_capacity_from_log(text)
    model_path = model_path or DEFAULT_MODEL
    generic = ("Lower --batch-size and raise --gradient-accumulation-steps by the same factor, "
               "keep --gradient-checkpointing on, or use a lower-resolution checkpoint (-224); "
               "`pgm memory-estimate --gpu-memory <GB>` computes what fits.")
    config = memory.load_config(model_path, required=False)
    if capacity is None or config is None:
        return generic
    setup = memory.TrainSetup(batch_size=batch_size or TrainConfig.batch_size)
    accum = gradient_accumulation_steps or TrainConfig.gradient_accumulation_steps
    plan = memory.fit(config, setup, capacity, effective_batch=setup.batch_size * accum)
    if plan.fits and plan.batch_size >= setup.batch_size and setup.batch_size > 1:
        # The estimate says this run fits, yet it ran out: something else holds memory. Halve the
        # batch (same effective batch) rather than repeat flags that already failed.
        half = setup.batch_size // 2
        return (f"The estimate for {model_path} at --batch-size {setup.batch_size} "
                f"({plan.estimate.total / GiB:.1f} GiB) fits this {capacity / GiB:.1f} GiB GPU, so something "
                "else holds memory (another process in nvidia-smi, fragmentation, or longer sequences than "
                f"--max-length). Try --batch-size {half} --gradient-accumulation-steps "
                f"{accum * setup.batch_size // half} and PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True.")
    if plan.fits:
        return (f"For {model_path} on this {capacity / GiB:.1f} GiB GPU: {plan.flags()} "
                f"(estimated peak {plan.estimate.total / GiB:.1f} GiB). Also: "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True reduces fragmentation.")
    return f"{plan.reason} " + generic
