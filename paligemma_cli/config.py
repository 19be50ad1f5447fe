"""Every setting of pgm, declared once.

Each field's metadata carries its `--help` text (and choices / bounds); the CLI generates its
flags from these dataclasses (`paligemma_cli.cli._options`) and `--config FILE.yaml` uses the
same names as keys, so a setting is never written twice. No heavy imports here: `pgm --help`
reads this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from paligemma_cli.errors import PgmError

DEFAULT_MODEL = "google/paligemma-3b-pt-448"
TINY_MODEL = "tiny"
QUANTIZATIONS = ("4bit", "8bit", "none")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
LORA_TARGET_PARTS = ("language", "vision", "projector")
SCHEDULERS = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
REPORT_TARGETS = ("wandb", "tensorboard", "none")


def pgm_home() -> Path:
    """The folder pgm caches in (the tiny model, the image-check table): $PGM_HOME or ~/.cache/pgm."""
    return Path(os.environ.get("PGM_HOME") or Path.home() / ".cache" / "pgm")


def opt(help: str, *, choices: tuple[str, ...] | None = None, min: float | None = None,
        max: float | None = None, min_open: bool = False, positional: bool = False,
        repeatable: bool = False) -> dict:
    """Field metadata: the help text and the checks `validate` applies. A `repeatable` field is a
    comma list that the flag may also build by repetition (`--x a --x b` is `--x a,b`)."""
    return {"help": help, "choices": choices, "min": min, "max": max, "min_open": min_open,
            "positional": positional, "repeatable": repeatable}


def comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


@dataclass(frozen=True)
class ModelConfig:
    model_path: str = field(default=DEFAULT_MODEL, metadata=opt(
        "Base model: a Hugging Face id (PaliGemma 1 or 2), a local folder, or 'tiny' for the "
        "tiny random PaliGemma pgm builds offline (tests, demos)."))
    revision: str | None = field(default=None, metadata=opt(
        "Hub revision (branch, tag or commit) of --model-path."))
    quantization: str = field(default="4bit", metadata=opt(
        "Base-weight quantisation: 4bit (QLoRA: NF4, double quantisation), 8bit, or none "
        "(LoRA on bf16/fp32 weights).", choices=QUANTIZATIONS))
    compute_dtype: str = field(default="auto", metadata=opt(
        "Compute dtype of the quantised layers and of unquantised weights; auto = bf16 where the "
        "device supports it, else fp16 on GPUs without bf16, fp32 never by default.",
        choices=COMPUTE_DTYPES))
    gradient_checkpointing: bool = field(default=True, metadata=opt(
        "Recompute activations in the backward pass: much less memory, ~30% slower."))


@dataclass(frozen=True)
class LoraConfig:
    lora_rank: int = field(default=16, metadata=opt("LoRA rank r.", min=1))
    lora_alpha: float = field(default=32.0, metadata=opt(
        "LoRA alpha; the update is scaled by alpha / r.", min=0, min_open=True))
    lora_dropout: float = field(default=0.05, metadata=opt("Dropout on the LoRA input.", min=0, max=0.99))
    lora_targets: str = field(default="language", metadata=opt(
        "Where LoRA goes, comma-separated parts: language (q/k/v/o/gate/up/down of the Gemma "
        "decoder), vision (SigLIP attention and MLP), projector (multi-modal projector)."))

    def target_parts(self) -> tuple[str, ...]:
        return comma_list(self.lora_targets)


@dataclass(frozen=True)
class DataConfig:
    task: str = field(default="vqav2", metadata=opt(
        "Task: coco, docvqa, gqa or vqav2.", positional=True))
    data_root: Path | None = field(default=None, metadata=opt(
        "Folder with the data set in its official on-disk layout (see `pgm data layout TASK`)."))
    hf_dataset: str | None = field(default=None, metadata=opt(
        "Hugging Face dataset id, or a folder written by `datasets.save_to_disk` / parquet files "
        "with the hub schema. Default columns per task are documented in README."))
    train_file: Path | None = field(default=None, metadata=opt(
        'JSONL training file, one {"image": path, "prefix": ..., "suffix": ...} per line; image '
        "paths are relative to the file."))
    eval_file: Path | None = field(default=None, metadata=opt(
        "JSONL evaluation file in the same format (suffix may be a list of references)."))
    train_split: str | None = field(default=None, metadata=opt(
        "Training split name; default per task (vqav2 train2014, gqa train, docvqa train, "
        "coco train2017)."))
    eval_split: str | None = field(default=None, metadata=opt(
        "Evaluation split name; default per task (vqav2 val2014, gqa testdev, docvqa val, "
        "coco val2017)."))
    max_train_samples: int | None = field(default=None, metadata=opt(
        "Use only the first N training examples.", min=1))
    max_eval_samples: int | None = field(default=None, metadata=opt(
        "Use only the first N evaluation examples.", min=1))
    max_length: int | None = field(default=None, metadata=opt(
        "Maximum text tokens per example (prompt + answer, image tokens not counted); default "
        "per task (docvqa 256, others 64). Longer examples are truncated and counted.", min=8))
    prompt: str | None = field(default=None, metadata=opt(
        "Prompt template overriding the task's PaliGemma prompt; {question} is replaced "
        "(e.g. 'answer en {question}')."))
    dataloader_workers: int | None = field(default=None, metadata=opt(
        "Processes that decode images and build batches while the model computes (0 = in the main "
        "process); default: the CPUs per training process minus one, at most 8 (0 off Linux).", min=0))
    skip_image_check: bool = field(default=False, metadata=opt(
        "Skip the check, before the first step, that every image file the run uses exists and "
        "opens (cached in PGM_HOME by path, size and mtime, so reruns are quick). "
        "A bad image then stops training at its batch with one error line; checkpoints are kept."))


@dataclass(frozen=True)
class TrainConfig:
    output_dir: Path = field(default=Path("outputs/run"), metadata=opt(
        "Where checkpoints, the final adapter, logs and the loss curve go."))
    num_epochs: float = field(default=1.0, metadata=opt("Passes over the training data.", min=0, min_open=True))
    max_steps: int | None = field(default=None, metadata=opt(
        "Stop after this many optimiser steps (overrides --num-epochs).", min=1))
    batch_size: int = field(default=4, metadata=opt("Examples per device per micro-batch.", min=1))
    gradient_accumulation_steps: int = field(default=4, metadata=opt(
        "Micro-batches per optimiser step (effective batch = batch size x this x processes).", min=1))
    learning_rate: float = field(default=2e-4, metadata=opt("Peak learning rate.", min=0, min_open=True))
    weight_decay: float = field(default=0.0, metadata=opt("AdamW weight decay.", min=0))
    warmup_ratio: float = field(default=0.03, metadata=opt(
        "Fraction of the steps spent warming the learning rate up linearly.", min=0, max=1))
    lr_scheduler: str = field(default="cosine", metadata=opt(
        "Learning-rate schedule after warm-up.", choices=SCHEDULERS))
    optimizer: str = field(default="adamw", metadata=opt(
        "adamw (torch), adamw_8bit or paged_adamw_8bit (bitsandbytes, GPU only).", choices=OPTIMIZERS))
    max_grad_norm: float = field(default=1.0, metadata=opt("Gradient clipping norm (0 = off).", min=0))
    seed: int = field(default=42, metadata=opt(
        "Seed for LoRA init, data order and VQAv2 answer sampling.", min=0))
    logging_steps: int = field(default=10, metadata=opt("Log loss / lr every N steps.", min=1))
    save_steps: int = field(default=500, metadata=opt("Write a checkpoint every N steps.", min=1))
    save_total_limit: int = field(default=2, metadata=opt(
        "Keep only the newest K checkpoints (the final adapter and best/ are always kept).", min=1))
    eval_steps: int | None = field(default=None, metadata=opt(
        "Evaluate every N steps on the eval split, log the task metric and keep best/ by it.", min=1))
    report_to: str | None = field(default=None, metadata=opt(
        "Also log the train_log.jsonl scalars and eval metrics to: wandb (Weights & Biases; "
        "WANDB_MODE=offline works), tensorboard (event files in OUTPUT_DIR/tensorboard/), or none; "
        "several comma-separated or by repeating the flag. Default none.", repeatable=True))
    use_wandb: bool | None = field(default=None, metadata=opt(
        "Same as --report-to wandb (the older flag)."))
    wandb_project: str = field(default="pgm", metadata=opt("W&B project name."))
    push_to_hub: str | None = field(default=None, metadata=opt(
        "After the run has fully succeeded, upload the adapter, processor, run_config.json, "
        "train_log.jsonl, loss.png and a model card (README.md) to this Hugging Face repo "
        "(user/name) in one commit. Needs a token (`hf auth login` or HF_TOKEN), checked before "
        "training starts."))
    hub_private: bool = field(default=False, metadata=opt(
        "Create the --push-to-hub repo as private (an existing repo keeps its visibility)."))
    overwrite: bool = field(default=False, metadata=opt(
        "Start over in an output dir holding an earlier pgm run: only the files pgm recorded there are "
        "replaced (a folder holding other files is refused)."))
    resume: bool = field(default=False, metadata=opt(
        "Continue from the newest checkpoint in --output-dir that loads completely."))
    group_by_length: bool | None = field(default=None, metadata=opt(
        "Batch examples of similar token length (shuffled in mega-batches from --seed), so padding "
        "wastes little; default on for docvqa and coco (long, mixed answers), off for vqav2 and gqa."))

    def trackers(self) -> tuple[str, ...]:
        """Where the run logs besides train_log.jsonl: () or some of wandb, tensorboard."""
        if self.report_to is not None:
            return tuple(dict.fromkeys(n for n in comma_list(self.report_to) if n != "none"))
        return ("wandb",) if self.use_wandb else ()


@dataclass(frozen=True)
class EvalConfig:
    max_new_tokens: int | None = field(default=None, metadata=opt(
        "Tokens to generate per answer; default per task (vqa/gqa 16, docvqa 32, coco 48).", min=1))
    eval_batch_size: int = field(default=16, metadata=opt("Examples per generation batch.", min=1))


@dataclass(frozen=True)
class TrainRun:
    """Everything `pgm train` needs, in sections the engine takes one by one."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-friendly record of every setting (what `run_config.json` stores)."""
        out: dict[str, Any] = {}
        for section in (self.model, self.lora, self.data, self.train, self.eval):
            for f in fields(section):
                value = getattr(section, f.name)
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out


SECTIONS = {"model": ModelConfig, "lora": LoraConfig, "data": DataConfig, "train": TrainConfig,
            "eval": EvalConfig}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    if value is None:
        return None
    if meta.get("choices") and value not in meta["choices"]:
        return f"{flag(f.name)} must be one of {', '.join(meta['choices'])} (got {value!r})"
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison
        return f"{flag(f.name)} must be a finite number (got {value})"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_open") and value == lo)):
            rel = ">" if meta.get("min_open") else ">="
            return f"{flag(f.name)} must be {rel} {lo:g} (got {value})"
        if hi is not None and value > hi:
            return f"{flag(f.name)} must be <= {hi:g} (got {value})"
    return None


def validate(run: TrainRun) -> None:
    """Check every field and the combinations; raise one PgmError listing all problems."""
    problems = []
    for section in (run.model, run.lora, run.data, run.train, run.eval):
        for f in fields(section):
            msg = _check_field(f, getattr(section, f.name))
            if msg:
                problems.append(msg)
    bad_parts = [p for p in run.lora.target_parts() if p not in LORA_TARGET_PARTS]
    if bad_parts or not run.lora.target_parts():
        problems.append(f"--lora-targets takes a comma list of {', '.join(LORA_TARGET_PARTS)} "
                        f"(got {run.lora.lora_targets!r})")
    sources = [n for n, v in (("--data-root", run.data.data_root), ("--hf-dataset", run.data.hf_dataset),
                              ("--train-file", run.data.train_file)) if v is not None]
    if len(sources) > 1:
        problems.append(f"give one data source, not {' and '.join(sources)}")
    problems += report_to_problems(run.train)
    if run.train.hub_private and not run.train.push_to_hub:
        problems.append("--hub-private only applies with --push-to-hub REPO_ID")
    if run.train.resume and run.train.overwrite:
        problems.append("--resume continues the run in --output-dir and --overwrite starts it over: give one")
    if problems:
        raise PgmError("; ".join(problems) + ".", "See `pgm train --help`.")


def report_to_problems(cfg: TrainConfig) -> list[str]:
    """--report-to names known targets, `none` alone, and agrees with --use-wandb when both are given."""
    if cfg.report_to is None:
        return []
    names = comma_list(cfg.report_to)
    unknown = [n for n in names if n not in REPORT_TARGETS]
    if unknown or not names:
        return [f"--report-to takes {', '.join(REPORT_TARGETS)} (comma-separated or repeated; got {cfg.report_to!r})"]
    if "none" in names and len(set(names)) > 1:
        return [f"--report-to none excludes {', '.join(n for n in names if n != 'none')}: give one"]
    if cfg.use_wandb is not None and cfg.use_wandb != ("wandb" in names):
        given = "--use-wandb" if cfg.use_wandb else "--no-use-wandb"
        return [f"{given} and --report-to {cfg.report_to} disagree: give --report-to alone "
                "(--use-wandb is --report-to wandb)"]
    return []


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a `--config` file: a flat mapping whose keys are flag names (dashes or underscores)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PgmError(f"Cannot read --config {path}: {exc.strerror}.", "Check the path.") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PgmError(f"--config {path}{where} is not valid YAML.", "Fix the syntax.") from None
    if not isinstance(data, dict):
        raise PgmError(f"--config {path} must be a mapping of flag names to values.",
                       "Example: `learning_rate: 1.0e-4`.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def all_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Field name -> (section name, field) over every section."""
    return {f.name: (sec, f) for sec, cls in SECTIONS.items() for f in fields(cls)}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    if value is None:
        return None
    kind = str(f.type)
    if f.metadata.get("repeatable") and isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)  # repeated flag / YAML list -> the comma list
    try:
        if "Path" in kind:
            return Path(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise PgmError(f"{flag(f.name)} has the wrong type: {value!r}.",
                       f"Expected {kind.split(' |')[0]}.") from None


def train_command(settings: dict[str, Any]) -> str:
    """The `pgm train` command that gives `settings` (run_config.json's "pgm_run"): the task and every
    setting that differs from its default (--resume and --overwrite left out: they say how a run
    was started, not what it is)."""
    import shlex

    words = ["pgm", "train", str(settings.get("task", DataConfig.task))]
    for name, (_, f) in all_fields().items():
        value = settings.get(name, f.default)
        if f.metadata.get("positional") or name in ("resume", "overwrite") or value == _default_value(f):
            continue
        if isinstance(value, bool):
            words.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif value is not None:
            words += [flag(name), str(value)]
    return shlex.join(words)


def _default_value(f: dataclasses.Field) -> Any:
    return str(f.default) if isinstance(f.default, Path) else f.default


def build_run(values: dict[str, Any], config_file: Path | None = None) -> TrainRun:
    """Defaults < `--config` file < explicit flags (`values`, None meaning 'not given')."""
    known = all_fields()
    merged: dict[str, Any] = {}
    if config_file is not None:
        for key, value in load_yaml(config_file).items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"Did you mean {close[0]!r}?" if close else "Keys are the flag names of `pgm train --help`."
                raise PgmError(f"--config {config_file}: unknown key {key!r}.", hint)
            merged[key] = value
    merged.update({k: v for k, v in values.items() if v not in (None, [], ()) and k in known})
    kwargs: dict[str, dict[str, Any]] = {sec: {} for sec in SECTIONS}
    for key, value in merged.items():
        sec, f = known[key]
        kwargs[sec][key] = _coerce(f, value)
    run = TrainRun(**{sec: SECTIONS[sec](**kw) for sec, kw in kwargs.items()})
    validate(run)
    return run
