"""The QLoRA training loop (accelerate): one process or many, resumable bit-for-bit.

Gradient accumulation is counted by position inside the epoch (not by a global counter), so a
run resumed from a checkpoint accumulates exactly the same micro-batches as one never stopped.
Only the main process writes checkpoints, logs and events.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from paligemma_cli.config import TrainRun
from paligemma_cli.engine.checkpoint import (LoopState, crash_point, latest_checkpoint, require_resumable,
                                             resume_from, rng_state, save_checkpoint, set_rng_state,
                                             write_error_reason, write_errors)
from paligemma_cli.engine.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import Output, check_output, claim_output

LOG_FILE = "train_log.jsonl"
RUN_CONFIG = "run_config.json"


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    total_steps: int
    final_loss: float | None
    seconds: float
    interrupted: bool = False
    main_process: bool = True  # False on the other processes of a multi-process run (they print nothing)
    best: dict[str, Any] | None = None
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    truncated_examples: int = 0


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint at the next step and stop."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _make_optimizer(run: TrainRun, params):
    import torch

    name = run.train.optimizer
    kwargs = {"lr": run.train.learning_rate, "weight_decay": run.train.weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if not torch.cuda.is_available():
        raise PgmError(f"--optimizer {name} needs a CUDA GPU.", "Use --optimizer adamw on CPU.")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(params, **kwargs)


def _make_scheduler(run: TrainRun, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(run.train.lr_scheduler, run.train.lr_scheduler)
    warmup = int(math.ceil(run.train.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _truncate_log(output: Output, step: int) -> None:
    """Keep the log lines up to `step`: later ones were written after the checkpoint a resume starts
    from and will be logged again (a line torn by a crash is dropped too)."""
    path = output.path / LOG_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    output.write(LOG_FILE, "".join(kept))


def _write_fault(out: Path, exc: BaseException, what: str) -> PgmError:
    """Disk full (or the folder gone read-only) outside a checkpoint save: one line, and how to go on."""
    prev = latest_checkpoint(out)
    return PgmError(f"Writing {what} to {out} failed: {write_error_reason(exc)}.",
                    "Free disk space (or choose another --output-dir), then rerun"
                    + (f" with --resume; it continues from {prev.name}." if prev else "."))


def _kept_checkpoint(out: Path) -> str:
    prev = latest_checkpoint(out)
    return f"The last good checkpoint, {prev}, is kept." if prev else "No checkpoint was written yet."


def _numerical_fault(value: float, what: str, step: int, detail: str, out: Path) -> PgmError:
    return PgmError(
        f"The {what} became {value} at step {step} ({detail}); training stopped.",
        "Likely causes: a learning rate too high (try --learning-rate 1e-5), fp16 compute on Gemma "
        "(use --compute-dtype bf16 or fp32), or a bad example. " + _kept_checkpoint(out))


def _train_loader(run: TrainRun, task, dataset, collator, processes: int, events: Events):
    """The training DataLoader (workers, sampler) and its sampler; says which it chose."""
    from paligemma_cli.engine.loader import (EpochSampler, LengthGroupedSampler, approx_token_counts, make_loader,
                                             resolve_workers)
    from paligemma_cli.engine.model import device_kind

    cfg = run.train
    grouped = task.group_by_length if cfg.group_by_length is None else cfg.group_by_length
    if grouped:
        sampler = LengthGroupedSampler(approx_token_counts(dataset.length_texts()), cfg.batch_size, cfg.seed)
    else:
        sampler = EpochSampler(len(dataset), cfg.seed)
    workers = resolve_workers(run.data.dataloader_workers, processes)
    events.message(f"Input: {workers} loader worker{'s' * (workers != 1)} per process, "
                   + ("length-grouped batches." if grouped else "random order."))
    loader = make_loader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator,
                         workers=workers, seed=cfg.seed, persistent=True, pin_memory=device_kind() == "cuda")
    return loader, sampler


def _launch_rank() -> int:
    """This process's rank as the launcher (torchrun, MPI) set it; 0 when run alone."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _check_images(examples: list, accelerator, events: Events) -> None:
    """Every image file the run may draw exists and opens; each process checks 1/N of them.

    Any process may draw any example in some epoch (a fresh permutation per epoch), so all of the
    run's images are checked, split between the processes and combined: one error, same everywhere.
    """
    from accelerate.utils import gather_object

    from paligemma_cli.data.sources import check_image_files

    check_image_files(examples, events, rank=accelerator.process_index, world=accelerator.num_processes,
                      gather=gather_object)


def train(run: TrainRun, events: Events | None = None) -> TrainResult:
    """Run `pgm train`: load data and model, train with LoRA, checkpoint, evaluate, save the adapter."""
    from paligemma_cli.data.sources import load_examples, split_for
    from paligemma_cli.engine.model import device_kind, resolve_compute_dtype, resolve_model_path
    from paligemma_cli.tasks import get_task

    events = events or Events()
    cfg = run.train
    task = get_task(run.data.task)
    started = time.time()
    out = Path(cfg.output_dir)

    # What a user can get wrong is checked before torch, accelerate and the model load (seconds to
    # minutes), in every process, changing nothing of the user's: output dir, checkpoint, data, model path.
    # Before torch is imported only the launcher's environment says which process this is; only the
    # first one reports progress.
    early = events if _launch_rank() == 0 else Events()
    for note in check_output(out, "train", overwrite=cfg.overwrite, resume=cfg.resume):
        early.message(note, "warning")  # what a killed run left unfinished, undone
    if cfg.resume:
        require_resumable(out)
    early.phase_start(f"Reading the {task.name} {split_for(task, run.data, 'train')} data")
    train_examples = load_examples(task, run.data, "train", check_images=False)
    eval_examples, eval_extra = [], {}
    if cfg.eval_steps:
        eval_examples = load_examples(task, run.data, "eval", check_images=False)
        if run.data.data_root is not None:
            eval_extra = task.load_score_extra(Path(run.data.data_root), split_for(task, run.data, "eval"))
    # Millions of long-lived objects at real size: keep the cyclic GC from walking them again on
    # every later collection (model loading, every step).
    gc.freeze()
    early.phase_end(f"{len(train_examples):,} training examples"
                    + (f", {len(eval_examples):,} for evaluation" if eval_examples else ""))
    resolve_model_path(run.model.model_path)

    early.phase_start("Starting torch and accelerate")
    import torch
    from accelerate import Accelerator

    mixed = "bf16" if (device_kind() == "cuda" and resolve_compute_dtype(run.model.compute_dtype) == torch.bfloat16) else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=device_kind() == "cpu")
    early.phase_end(f"{accelerator.num_processes} processes on {accelerator.device}" if accelerator.num_processes > 1
                    else f"on {accelerator.device}")
    if not accelerator.is_main_process:
        events = Events()
    if not run.data.skip_image_check:  # before the output dir is touched: a bad image changes nothing
        _check_images(train_examples + eval_examples, accelerator, events)
    data = (train_examples, eval_examples, eval_extra)
    if not accelerator.is_main_process:  # only the main process writes
        accelerator.wait_for_everyone()
        return _train_claimed(run, task, events, accelerator, data, started, None)
    # One writer: the output dir stays locked until the run ends; what a failed run wrote before
    # its first checkpoint is removed again (and an --overwrite'n earlier run put back).
    with claim_output(out, "train", overwrite=cfg.overwrite, resume=cfg.resume) as output:
        for note in output.notes:
            events.message(note, "warning")
        accelerator.wait_for_everyone()
        return _train_claimed(run, task, events, accelerator, data, started, output)


def _train_claimed(run: TrainRun, task, events: Events, accelerator, data: tuple, started: float,
                   output: Output | None) -> TrainResult:
    """The run itself, once the output dir is claimed (`output` is None off the main process)."""
    import torch

    from paligemma_cli.engine.batches import TrainCollator, TrainingSet, to_device, truncated_rows
    from paligemma_cli.engine.loader import batch_error, resolve_workers
    from paligemma_cli.engine.loss import answer_loss
    from paligemma_cli.engine.model import attach_lora, load_model, load_processor
    from paligemma_cli.engine.tracking import Tracker

    cfg = run.train
    out = Path(cfg.output_dir)
    main = accelerator.is_main_process
    train_examples, eval_examples, eval_extra = data
    events.phase_start(f"Loading the model ({run.model.model_path}, {run.model.quantization})")
    processor = load_processor(run.model.model_path, run.model.revision)
    model = load_model(run.model)
    model = attach_lora(model, run.model, run.lora, seed=cfg.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    events.phase_end(f"{total_params:,} parameters, LoRA rank {run.lora.lora_rank}")

    dataset = TrainingSet(task, train_examples, cfg.seed)
    collator = TrainCollator(processor, run.data.max_length or task.max_length)
    loader, sampler = _train_loader(run, task, dataset, collator, accelerator.num_processes, events)
    optimizer = _make_optimizer(run, [p for p in model.parameters() if p.requires_grad])
    model, loader = accelerator.prepare(model, loader)

    accum = cfg.gradient_accumulation_steps
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * steps_per_epoch))
    scheduler = _make_scheduler(run, optimizer, total_steps)

    state, rng = LoopState(total_steps=total_steps), None
    log_path = out / LOG_FILE
    if cfg.resume:
        ckpt, state, rng, skipped = resume_from(out, accelerator.unwrap_model(model), optimizer, scheduler)
        for path, why in skipped:  # damaged after it was written (disk fault, a copy cut short)
            events.message(f"Skipped checkpoint {path.name}: {why}; its steps are trained again.", "warning")
        if state.total_steps != total_steps:
            events.message(f"Resumed run planned {state.total_steps} steps; now {total_steps}.", "warning")
            state.total_steps = total_steps
        if main:
            for path, _ in skipped:  # pgm's own, unusable, and newer than the run now continues from
                shutil.rmtree(path, ignore_errors=True)
            _truncate_log(output, state.global_step)
        events.message(f"Resuming from {ckpt.name} (step {state.global_step} of {total_steps}).")

    if main:  # recorded before written: what a crash cuts short is still pgm's to remove
        output.record(LOG_FILE, "checkpoints", *(["wandb"] if cfg.use_wandb else []))
        output.write(RUN_CONFIG, json.dumps({"pgm_run": run.to_dict(), "task": task.name,
                                             "trainable_params": trainable, "total_params": total_params,
                                             "processes": accelerator.num_processes, "total_steps": total_steps},
                                            indent=2, default=str))
    tracker = Tracker(cfg.use_wandb and main, cfg.wandb_project, run.to_dict(), out, state.wandb_run_id)
    state.wandb_run_id = tracker.run_id

    events.train_start(total_steps, state.global_step, {
        "task": task.name, "examples": len(train_examples), "trainable_params": trainable,
        "total_params": total_params, "effective_batch": cfg.batch_size * accum * accelerator.num_processes,
        "device": str(accelerator.device), "processes": accelerator.num_processes})

    def checkpoint() -> Path | None:
        path = None
        if main:
            saved = replace(state)
            if saved.batch_in_epoch == batches_per_epoch:  # the epoch is over: resume starts the next
                saved.epoch, saved.batch_in_epoch = saved.epoch + 1, 0
            path = save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, saved,
                                   keep=cfg.save_total_limit, rng=rng_state())
            output.keep()  # the run is resumable now: a later failure keeps what it wrote
            events.checkpoint_saved(str(path), state.global_step)
        accelerator.wait_for_everyone()
        return path

    eval_workers = resolve_workers(run.data.dataloader_workers, accelerator.num_processes)

    def run_eval() -> None:
        from paligemma_cli.engine.evaluate import evaluate_model

        if main:
            result = evaluate_model(task, accelerator.unwrap_model(model), processor, eval_examples,
                                    max_new_tokens=run.eval.max_new_tokens or task.max_new_tokens,
                                    batch_size=run.eval.eval_batch_size, extra=eval_extra, events=events,
                                    workers=eval_workers)
            value = result.metrics.get(task.headline)
            entry = {"step": state.global_step, **{k: v for k, v in result.metrics.items()
                                                   if isinstance(v, (int, float))}}
            state.log_history.append({"eval": entry})
            with open(log_path, "a") as fh:  # beside the losses, so the log tells the whole run
                fh.write(json.dumps({"step": state.global_step, "eval": entry}) + "\n")
            tracker.log({f"eval/{k}": v for k, v in entry.items() if k != "step"}, state.global_step)
            if value is not None and (state.best_metric is None or value > state.best_metric):
                state.best_metric, state.best_step = value, state.global_step
                try:  # written aside and swapped in, so a crash never leaves a half best/
                    with output.staged("best") as tmp:
                        accelerator.unwrap_model(model).save_pretrained(tmp)
                        processor.save_pretrained(tmp)
                except write_errors() as exc:
                    raise _write_fault(out, exc, "best/") from None
        accelerator.wait_for_everyone()

    model.train()
    last_loss = None
    window_loss, window_n, window_samples, window_t = 0.0, 0, 0, time.time()
    window_tokens, window_padded, truncated = 0, 0, 0
    interrupted = False
    if rng is not None:  # restored last, so nothing above (W&B, loaders) can shift the streams
        set_rng_state(rng)
    with _StopFlag() as stop:
        while state.global_step < total_steps and not interrupted:
            sampler.set_epoch(state.epoch)  # its (epoch, index) keys carry the epoch into the workers
            skip = state.batch_in_epoch
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            # accelerate's loader re-sets the sampler's epoch from its own iteration counter on
            # every iter(); after a resume that counter starts at 0, so give it the real epoch.
            epoch_loader.set_epoch(state.epoch)
            pos = skip
            for batch in epoch_loader:
                failed = batch_error(batch)
                if failed:  # an image a worker could not read: the run stops, its checkpoints stay
                    resume = " with --resume" if latest_checkpoint(out) else ""
                    raise PgmError(failed.message, f"{failed.hint} Then rerun{resume}. {_kept_checkpoint(out)}")
                truncated += truncated_rows(batch, processor.tokenizer.eos_token_id)
                window_tokens += batch["attention_mask"].numel()
                window_padded += int((batch["attention_mask"] == 0).sum())
                pos += 1
                group_start = ((pos - 1) // accum) * accum
                group_len = min(accum, batches_per_epoch - group_start)
                sync = pos == group_start + group_len
                batch = to_device(batch, model)
                ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    loss = answer_loss(model, batch)  # logits for answer positions only
                    # accelerate's reduce knows sum/mean/max only: count the processes with a bad loss
                    bad = (~torch.isfinite(loss.detach())).float()
                    if accelerator.num_processes > 1:
                        bad = accelerator.reduce(bad, "max")
                    if bad.item() > 0:
                        raise _numerical_fault(loss.item(), "loss", state.global_step + 1,
                                               f"epoch {state.epoch}, micro-batch {pos}", out)
                    accelerator.backward(loss / group_len)
                window_loss += loss.detach().float().item() / group_len
                window_samples += batch["input_ids"].shape[0] * accelerator.num_processes
                if not sync:
                    continue
                crash_point("PGM_TEST_KILL_AT_STEP", state.global_step + 1)
                if cfg.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    if not math.isfinite(float(norm)):  # an inf/NaN update would poison the next checkpoint
                        raise _numerical_fault(float(norm), "gradient norm", state.global_step + 1,
                                               f"epoch {state.epoch}", out)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.batch_in_epoch = pos
                window_n += 1
                step_loss = window_loss / window_n
                if accelerator.num_processes > 1:
                    step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
                last_loss = step_loss
                if state.global_step % cfg.logging_steps == 0 or state.global_step == total_steps:
                    elapsed = max(time.time() - window_t, 1e-9)
                    record = {"step": state.global_step, "epoch": state.epoch, "loss": step_loss,
                              "lr": scheduler.get_last_lr()[0], "samples_per_s": window_samples / elapsed,
                              "padded_fraction": window_padded / max(window_tokens, 1),
                              "padded_tokens": window_padded}
                    state.log_history.append(record)
                    if main:
                        try:
                            with open(log_path, "a") as fh:
                                fh.write(json.dumps(record) + "\n")
                        except OSError as exc:
                            raise _write_fault(out, exc, LOG_FILE) from None
                    tracker.log({"train/loss": step_loss, "train/lr": record["lr"]}, state.global_step)
                    events.train_step(state.global_step, record)
                    window_loss, window_n, window_samples, window_t = 0.0, 0, 0, time.time()
                    window_tokens, window_padded = 0, 0
                else:
                    events.train_step(state.global_step, {})
                if cfg.eval_steps and state.global_step % cfg.eval_steps == 0:
                    run_eval()
                done = state.global_step >= total_steps
                stopping = stop.requested
                if accelerator.num_processes > 1:  # every process must stop at the same step
                    stopping = accelerator.reduce(torch.tensor(float(stopping), device=accelerator.device),
                                                  "max").item() > 0
                if stopping or done or state.global_step % cfg.save_steps == 0:
                    checkpoint()
                if stopping:
                    interrupted = True
                    break
                if done:
                    break
            else:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    result = TrainResult(out, state.global_step, total_steps, last_loss, time.time() - started,
                         interrupted=interrupted, main_process=main, truncated_examples=truncated,
                         eval_history=[h["eval"] for h in state.log_history if "eval" in h])
    if interrupted:
        tracker.finish()
        return result
    if cfg.eval_steps and (not result.eval_history or result.eval_history[-1]["step"] != state.global_step):
        run_eval()
        result.eval_history = [h["eval"] for h in state.log_history if "eval" in h]
    if main:
        from paligemma_cli.engine.plot import plot_loss_curve

        try:  # adapter, processor and loss curve appear together, when all are written
            with output.staged() as tmp:
                accelerator.unwrap_model(model).save_pretrained(tmp)
                processor.save_pretrained(tmp)
                plot_loss_curve(log_path, tmp / "loss.png")
        except write_errors() as exc:
            raise _write_fault(out, exc, "the final adapter") from None
        if state.best_step is not None:
            result.best = {"step": state.best_step, task.headline: state.best_metric}
    tracker.finish()
    accelerator.wait_for_everyone()
    return result
