"""The QLoRA training loop (accelerate): one process or many, resumable bit-for-bit.

`train(run)` reads as the algorithm: prepare a session (train/setup.py), restore a checkpoint when
resuming, then for each epoch and micro-batch: forward and backward; every `accum` micro-batches
one optimiser step, a log line, an evaluation, a checkpoint; at the end the adapter.

Gradient accumulation is counted by position inside the epoch (not by a global counter), so a
run resumed from a checkpoint accumulates exactly the same micro-batches as one never stopped.
Only the main process writes checkpoints, logs and events.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from paligemma_cli.config import TrainRun
from paligemma_cli.errors import PgmError
from paligemma_cli.events import Events
from paligemma_cli.outputs import RUN_CONFIG, Output, claim_output
from paligemma_cli.train.checkpoint import (LoopState, crash_point, latest_checkpoint, resume_from, rng_state,
                                            save_checkpoint, set_rng_state, write_error_reason, write_errors)
from paligemma_cli.train.setup import Inputs, Session, build, prepare
from paligemma_cli.train.trackers import TENSORBOARD_DIR, WANDB_DIR, Tracker, open_trackers, scalars
from paligemma_cli.train.tracking import LOG_FILE, Window, append_log, log_up_to


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
    hub_url: str | None = None  # the commit --push-to-hub made


def train(run: TrainRun, events: Events | None = None) -> TrainResult:
    """Run `pgm train`: load data and model, train with LoRA, checkpoint, evaluate, save the adapter;
    with --push-to-hub, push it once all of that succeeded (main process only)."""
    started = time.time()
    inputs = prepare(run, events or Events())
    with claimed(inputs) as output:
        loop = Loop(build(inputs, output))
        loop.start()
        try:
            with StopFlag() as stop:
                loop.run(stop)
            result = loop.finish(time.time() - started)
        except BaseException:
            loop.tracker.flush()  # what TensorBoard buffered up to the failure
            raise
        if run.train.push_to_hub and result.main_process and not result.interrupted:
            result.hub_url = push(output, run, inputs.events)
        return result


def push(output: Output, run: TrainRun, events: Events) -> str:
    """The model card (README.md, staged like every file pgm writes), then one commit to the hub."""
    from paligemma_cli.hub.push import push_training

    return push_training(output, run.train.push_to_hub, private=run.train.hub_private, events=events)


@contextlib.contextmanager
def claimed(inputs: Inputs):
    """One writer: the main process holds the output dir until the run ends; what a failed run wrote
    before its first checkpoint is removed again (and an --overwrite'n earlier run put back).
    The other processes write nothing and get None."""
    acc = inputs.accelerator
    if not acc.is_main_process:
        acc.wait_for_everyone()
        yield None
        return
    cfg = inputs.run.train
    with claim_output(inputs.out, "train", overwrite=cfg.overwrite, resume=cfg.resume) as output:
        for note in output.notes:
            inputs.events.message(note, "warning")
        acc.wait_for_everyone()
        yield output


class StopFlag:
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


class Loop:
    """The steps of one training run over a prepared `Session`."""

    def __init__(self, session: Session):
        self.s = session
        self.cfg = session.run.train
        self.accum = self.cfg.gradient_accumulation_steps
        self.log_path = session.out / LOG_FILE
        self.state = LoopState(total_steps=session.total_steps)
        self.rng: dict[str, Any] | None = None
        self.tracker: Tracker = Tracker()
        self.last_loss: float | None = None
        self.truncated = 0
        self.interrupted = False
        self.window = Window()

    # ----- before the first step -------------------------------------------------------------

    def start(self) -> None:
        """Restore a checkpoint when resuming, start tracking, write run_config.json, announce."""
        s = self.s
        if self.cfg.resume:
            self.restore()
        trackers = self.cfg.trackers() if s.main else ()
        if s.main:  # recorded before written: what a crash cuts short is still pgm's to remove
            s.output.record(LOG_FILE, "checkpoints",
                            *[{"wandb": WANDB_DIR, "tensorboard": TENSORBOARD_DIR}[t] for t in trackers])
            s.output.write(RUN_CONFIG, json.dumps({
                "pgm_run": s.run.to_dict(), "task": s.task.name, "trainable_params": s.trainable_params,
                "total_params": s.total_params, "processes": s.processes, "total_steps": s.total_steps,
                "examples": s.train_count}, indent=2, default=str))
        self.tracker = open_trackers(trackers, project=self.cfg.wandb_project, config=s.run.to_dict(),
                                     output_dir=s.out, wandb_run_id=self.state.wandb_run_id,
                                     start_step=self.state.global_step)
        self.state.wandb_run_id = self.tracker.wandb_run_id or self.state.wandb_run_id
        s.events.train_start(s.total_steps, self.state.global_step, {
            "task": s.task.name, "examples": s.train_count, "trainable_params": s.trainable_params,
            "total_params": s.total_params, "effective_batch": self.cfg.batch_size * self.accum * s.processes,
            "device": str(s.accelerator.device), "processes": s.processes})

    def restore(self) -> None:
        """The newest checkpoint that loads completely; damaged newer ones are named and removed."""
        s = self.s
        ckpt, self.state, self.rng, skipped = resume_from(s.out, s.accelerator.unwrap_model(s.model), s.optimizer,
                                                          s.scheduler)
        for path, why in skipped:  # damaged after it was written (disk fault, a copy cut short)
            s.events.message(f"Skipped checkpoint {path.name}: {why}; its steps are trained again.", "warning")
        if self.state.total_steps != s.total_steps:
            s.events.message(f"Resumed run planned {self.state.total_steps} steps; now {s.total_steps}.", "warning")
            self.state.total_steps = s.total_steps
        if s.main:
            for path, _ in skipped:  # pgm's own, unusable, and newer than the run now continues from
                shutil.rmtree(path, ignore_errors=True)
            s.output.write(LOG_FILE, log_up_to(self.log_path, self.state.global_step))
        s.events.message(f"Resuming from {ckpt.name} (step {self.state.global_step} of {s.total_steps}).")

    # ----- the epochs ------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> None:
        """Epochs of micro-batches until the last step, or a stop request (checkpointed)."""
        s, state = self.s, self.state
        s.model.train()
        self.window = Window()
        if self.rng is not None:  # restored last, so nothing above (W&B, loaders) can shift the streams
            set_rng_state(self.rng)
        while state.global_step < s.total_steps and not self.interrupted:
            s.sampler.set_epoch(state.epoch)  # its (epoch, index) keys carry the epoch into the workers
            skip = state.batch_in_epoch
            epoch_loader = s.accelerator.skip_first_batches(s.loader, skip) if skip else s.loader
            # accelerate's loader re-sets the sampler's epoch from its own iteration counter on
            # every iter(); after a resume that counter starts at 0, so give it the real epoch.
            epoch_loader.set_epoch(state.epoch)
            pos = skip
            for batch in epoch_loader:
                pos += 1
                if not self.micro_step(batch, pos):
                    continue
                self.optimizer_step(pos)
                if self.after_step(stop):
                    break
            else:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    def group_len(self, pos: int) -> int:
        """Micro-batches in the accumulation group of micro-batch `pos` (the last one may be short)."""
        group_start = ((pos - 1) // self.accum) * self.accum
        return min(self.accum, self.s.batches_per_epoch - group_start)

    def micro_step(self, batch, pos: int) -> bool:
        """Forward and backward on micro-batch `pos` of the epoch; True when its group is complete."""
        import torch

        from paligemma_cli.model.batches import to_device, truncated_rows
        from paligemma_cli.model.loader import batch_error
        from paligemma_cli.model.loss import answer_loss

        s, acc = self.s, self.s.accelerator
        failed = batch_error(batch)
        if failed:  # an image a worker could not read: the run stops, its checkpoints stay
            resume = " with --resume" if latest_checkpoint(s.out) else ""
            raise PgmError(failed.message, f"{failed.hint} Then rerun{resume}. {kept_checkpoint(s.out)}")
        self.truncated += truncated_rows(batch, s.processor.tokenizer.eos_token_id)
        mask = batch["attention_mask"]
        tokens, padded = mask.numel(), int((mask == 0).sum())
        group_len = self.group_len(pos)
        sync = pos % self.accum == 0 or pos == s.batches_per_epoch
        batch = to_device(batch, s.model)
        ctx = acc.no_sync(s.model) if not sync else contextlib.nullcontext()
        with ctx, acc.autocast():
            loss = answer_loss(s.model, batch)  # logits for answer positions only
            # accelerate's reduce knows sum/mean/max only: count the processes with a bad loss
            bad = (~torch.isfinite(loss.detach())).float()
            if s.processes > 1:
                bad = acc.reduce(bad, "max")
            if bad.item() > 0:
                raise numerical_fault(loss.item(), "loss", self.state.global_step + 1,
                                      f"epoch {self.state.epoch}, micro-batch {pos}", s.out)
            acc.backward(loss / group_len)
        self.window.add_batch(loss.detach().float().item() / group_len,
                              batch["input_ids"].shape[0] * s.processes, tokens, padded)
        return sync

    def optimizer_step(self, pos: int) -> None:
        """Clip, step, schedule; then the step's log line."""
        import torch

        s, state = self.s, self.state
        crash_point("PGM_TEST_KILL_AT_STEP", state.global_step + 1)
        if self.cfg.max_grad_norm > 0:
            norm = float(s.accelerator.clip_grad_norm_(s.model.parameters(), self.cfg.max_grad_norm))
            if not math.isfinite(norm):  # an inf/NaN update would poison the next checkpoint
                raise numerical_fault(norm, "gradient norm", state.global_step + 1, f"epoch {state.epoch}", s.out)
            self.window.grad_norm = norm  # the total norm before clipping, as the clip returns it
        s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.batch_in_epoch = pos
        self.window.steps += 1
        step_loss = self.window.loss / self.window.steps
        if s.processes > 1:
            step_loss = s.accelerator.reduce(torch.tensor(step_loss, device=s.accelerator.device), "mean").item()
        self.last_loss = step_loss
        self.log(step_loss)

    def log(self, step_loss: float) -> None:
        """Every --logging-steps (and at the last step): a train_log.jsonl line, the trackers, the progress bar."""
        s, state = self.s, self.state
        if state.global_step % self.cfg.logging_steps != 0 and state.global_step != s.total_steps:
            s.events.train_step(state.global_step, {})
            return
        record = self.window.record(state.global_step, state.epoch, step_loss, s.scheduler.get_last_lr()[0])
        state.log_history.append(record)
        if s.main:
            try:
                append_log(self.log_path, record)
            except OSError as exc:
                raise write_fault(s.out, exc, LOG_FILE) from None
        self.tracker.log(scalars("train", record), state.global_step)
        s.events.train_step(state.global_step, record)
        self.window = Window()

    def after_step(self, stop: StopFlag) -> bool:
        """Evaluate and checkpoint when due; True when the loop must end (last step or stop)."""
        import torch

        s, state = self.s, self.state
        done = state.global_step >= s.total_steps
        # the last step is evaluated before its checkpoint, so the checkpoint holds the whole run
        # (a --resume of a finished run, e.g. to push it again, then has nothing left to do)
        if self.cfg.eval_steps and (state.global_step % self.cfg.eval_steps == 0 or done):
            self.evaluate()
        stopping = stop.requested
        if s.processes > 1:  # every process must stop at the same step
            stopping = s.accelerator.reduce(torch.tensor(float(stopping), device=s.accelerator.device),
                                            "max").item() > 0
        if stopping or done or state.global_step % self.cfg.save_steps == 0:
            self.checkpoint()
        self.interrupted = bool(stopping)
        return bool(stopping or done)

    # ----- evaluation and checkpoints --------------------------------------------------------

    def evaluate(self) -> None:
        """The task metric on the eval split; the best adapter so far goes to best/."""
        from paligemma_cli.infer.evaluate import evaluate_model
        from paligemma_cli.model.loader import resolve_workers

        s, state = self.s, self.state
        if s.main:
            result = evaluate_model(s.task, s.accelerator.unwrap_model(s.model), s.processor, s.eval_examples,
                                    max_new_tokens=s.run.eval.max_new_tokens or s.task.max_new_tokens,
                                    batch_size=s.run.eval.eval_batch_size, extra=s.eval_extra, events=s.events,
                                    workers=resolve_workers(s.run.data.dataloader_workers, s.processes))
            value = result.metrics.get(s.task.headline)
            entry = {"step": state.global_step, **{k: v for k, v in result.metrics.items()
                                                   if isinstance(v, (int, float))}}
            state.log_history.append({"eval": entry})
            append_log(self.log_path, {"step": state.global_step, "eval": entry})  # the log tells the whole run
            self.tracker.log(scalars("eval", entry), state.global_step)
            if value is not None and (state.best_metric is None or value > state.best_metric):
                state.best_metric, state.best_step = value, state.global_step
                self.save_best()
        s.accelerator.wait_for_everyone()

    def save_best(self) -> None:
        s = self.s
        try:  # written aside and swapped in, so a crash never leaves a half best/
            with s.output.staged("best") as tmp:
                s.accelerator.unwrap_model(s.model).save_pretrained(tmp)
                s.processor.save_pretrained(tmp)
        except write_errors() as exc:
            raise write_fault(s.out, exc, "best/") from None

    def checkpoint(self) -> Path | None:
        s, path = self.s, None
        if s.main:
            saved = replace(self.state)
            if saved.batch_in_epoch == s.batches_per_epoch:  # the epoch is over: resume starts the next
                saved.epoch, saved.batch_in_epoch = saved.epoch + 1, 0
            path = save_checkpoint(s.out, s.accelerator.unwrap_model(s.model), s.optimizer, s.scheduler, saved,
                                   keep=self.cfg.save_total_limit, rng=rng_state())
            s.output.keep()  # the run is resumable now: a later failure keeps what it wrote
            s.events.checkpoint_saved(str(path), self.state.global_step)
            self.tracker.flush()  # everything up to the checkpoint's step is on disk with it
        s.accelerator.wait_for_everyone()
        return path

    # ----- the end ---------------------------------------------------------------------------

    def finish(self, seconds: float) -> TrainResult:
        """A last evaluation if one is due, then the adapter, processor and loss curve."""
        s, state = self.s, self.state
        result = TrainResult(s.out, state.global_step, s.total_steps, self.last_loss, seconds,
                             interrupted=self.interrupted, main_process=s.main, truncated_examples=self.truncated,
                             eval_history=self.eval_history())
        if self.interrupted:
            self.tracker.finish()
            return result
        if self.cfg.eval_steps and (not result.eval_history or result.eval_history[-1]["step"] != state.global_step):
            self.evaluate()
            result.eval_history = self.eval_history()
        if s.main:
            self.save_final()
            if state.best_step is not None:
                result.best = {"step": state.best_step, s.task.headline: state.best_metric}
        self.tracker.finish()
        s.accelerator.wait_for_everyone()
        return result

    def eval_history(self) -> list[dict[str, Any]]:
        return [h["eval"] for h in self.state.log_history if "eval" in h]

    def save_final(self) -> None:
        from paligemma_cli.train.plot import plot_loss_curve

        s = self.s
        try:  # adapter, processor and loss curve appear together, when all are written
            with s.output.staged() as tmp:
                s.accelerator.unwrap_model(s.model).save_pretrained(tmp)
                s.processor.save_pretrained(tmp)
                plot_loss_curve(self.log_path, tmp / "loss.png")
        except write_errors() as exc:
            raise write_fault(s.out, exc, "the final adapter") from None


# ----- faults as one line ---------------------------------------------------------------------

def write_fault(out: Path, exc: BaseException, what: str) -> PgmError:
    """Disk full (or the folder gone read-only) outside a checkpoint save: one line, and how to go on."""
    prev = latest_checkpoint(out)
    return PgmError(f"Writing {what} to {out} failed: {write_error_reason(exc)}.",
                    "Free disk space (or choose another --output-dir), then rerun"
                    + (f" with --resume; it continues from {prev.name}." if prev else "."))


def kept_checkpoint(out: Path) -> str:
    prev = latest_checkpoint(out)
    return f"The last good checkpoint, {prev}, is kept." if prev else "No checkpoint was written yet."


def numerical_fault(value: float, what: str, step: int, detail: str, out: Path) -> PgmError:
    return PgmError(
        f"The {what} became {value} at step {step} ({detail}); training stopped.",
        "Likely causes: a learning rate too high (try --learning-rate 1e-5), fp16 compute on Gemma "
        "(use --compute-dtype bf16 or fp32), or a bad example. " + kept_checkpoint(out))
