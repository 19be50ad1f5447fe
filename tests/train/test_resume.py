"""Resume, crashes and numerical faults, through the real `pgm train` in subprocesses.

The central claim: a run killed with SIGKILL mid-step, killed while writing a checkpoint, or
stopped with Ctrl-C, then resumed with `--resume`, ends with an adapter bit-identical (every
tensor `torch.equal`) to a run never interrupted, with the same per-step losses, one log line per
step, one W&B run id, and TensorBoard curves showing each step once with train_log.jsonl's values. The kills are placed exactly by the test hooks in
`paligemma_cli.train.checkpoint.crash_point` (inert unless their environment variable is set).

Sizes: 7 synthetic images -> 10 VQAv2 questions, batch 2 -> 5 micro-batches per epoch,
accumulation 2 -> 3 steps per epoch (the third has one micro-batch), 8 steps = 2 2/3 epochs.
Checkpoints every 2 steps land mid-epoch (2, 4) and on an epoch end (6).

Batches are built in persistent worker processes (2 in the reference, 1 in the interrupted runs)
in length-grouped order. The reference keeps its workers across both epoch ends: VQAv2 draws each
target from (seed, epoch, index), so an epoch that failed to reach the workers would change its
answers in epochs 1 and 2. At 10 questions, transformers' mega-batches hold one
batch each, so grouping here only reorders within batches; tests/model/test_loader.py checks it
at a size where it groups.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paligemma_cli.train.checkpoint import LoopState, latest_checkpoint, list_checkpoints, save_checkpoint
from paligemma_cli.errors import PgmError
from tests.train.test_trackers import assert_events_match_log

pytestmark = pytest.mark.slow

STEPS = 8
TRAIN = ["--model-path", "tiny", "--max-steps", str(STEPS), "--batch-size", "2",
         "--gradient-accumulation-steps", "2", "--save-steps", "2", "--logging-steps", "1", "--group-by-length"]


def pgm_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGM_TEST_")}
    # One thread: bit-identical runs need the same reduction order, and on a shared 2-core
    # machine torch's OpenMP threads spin against each other (8x slower).
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONUNBUFFERED="1", **extra)
    return env


def train_cmd(data: Path, out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "paligemma_cli", "train", "vqav2", "--data-root", str(data),
            "--output-dir", str(out), *TRAIN, *more]


def run(cmd: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=pgm_env(**extra), capture_output=True, text=True, timeout=300)


def adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def step_of(path: Path | None) -> int | None:
    return None if path is None else int(path.name.split("-")[1])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from paligemma_cli.tasks import get_task

    root = tmp_path_factory.mktemp("resume_data")
    get_task("vqav2").write_synthetic(root, 7, 0)
    return root


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory, tiny_model_dir) -> Path:
    """The run nobody interrupts."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run(train_cmd(data_root, out, "--dataloader-workers", "2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_killed_and_resumed_run_is_bit_identical(data_root, reference, tmp_path):
    out = tmp_path / "run"
    # --use-wandb (the older flag) agrees with --report-to wandb; the flag repeated adds up.
    first = ["--use-wandb", "--report-to", "wandb,tensorboard", "--dataloader-workers", "1"]
    wandb = ["--report-to", "wandb", "--report-to", "tensorboard", "--dataloader-workers", "1"]

    # 1. SIGKILL while step 4's checkpoint is half written: only the temp folder holds it.
    p = run(train_cmd(data_root, out, *first), PGM_TEST_CRASH_DURING_SAVE="4")
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    tmp = out / "checkpoints" / ".tmp-step-00000004"
    assert (tmp / "adapter_model.safetensors").exists() and not (tmp / "trainer_state.json").exists()
    assert step_of(latest_checkpoint(out)) == 2
    assert [r["step"] for r in log_records(out)] == [1, 2, 3, 4]  # 3 and 4 will be redone

    # 2. Resume from step 2 (mid-epoch 0); SIGKILL in the middle of step 5.
    p = run(train_cmd(data_root, out, *wandb, "--resume"), PGM_TEST_KILL_AT_STEP="5")
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert "Resuming from step-00000002" in p.stdout
    assert not tmp.exists()  # the next save cleared the half-written folder
    assert [step_of(c) for c in list_checkpoints(out)] == [2, 4]

    # 3. Resume from step 4 (mid-epoch 1); Ctrl-C once step 5 is logged: it checkpoints and stops.
    proc = subprocess.Popen(train_cmd(data_root, out, *wandb, "--resume"), env=pgm_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 5 "):
            proc.send_signal(signal.SIGINT)
            break
    seen += proc.stdout.readlines()
    text = "".join(seen)
    assert proc.wait(timeout=120) == 130, text
    assert "Resuming from step-00000004" in text and "Traceback" not in text
    stopped = step_of(latest_checkpoint(out))
    assert 5 <= stopped < STEPS, text
    assert f"Stopped at step {stopped}; checkpoint saved." in text and "--resume" in text
    assert not (out / "adapter_model.safetensors").exists()

    # 4. Resume to the end.
    p = run(train_cmd(data_root, out, *wandb, "--resume"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Resuming from step-{stopped:08d}" in p.stdout

    ref, got = adapter(reference), adapter(out)
    assert sorted(ref) == sorted(got) and len(ref) == 28  # 2 layers x 7 projections x (A, B)
    different = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not different, different

    # Every step logged once, with exactly the uninterrupted run's losses.
    ref_log, got_log = log_records(reference), log_records(out)
    assert [r["step"] for r in got_log] == list(range(1, STEPS + 1))
    assert [(r["step"], r["epoch"], r["loss"], r["lr"], r["grad_norm"]) for r in got_log] == \
           [(r["step"], r["epoch"], r["loss"], r["lr"], r["grad_norm"]) for r in ref_log]
    # TensorBoard: four event files; what the killed runs logged past their checkpoint is purged,
    # so every step shows once, with the values of train_log.jsonl.
    assert len(list((out / "tensorboard").iterdir())) == 4
    assert_events_match_log(out)

    # One W&B run across the four processes (offline runs are named offline-run-<time>-<id>).
    run_id = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["wandb_run_id"]
    assert run_id
    runs = [p.name for p in (out / "wandb").iterdir() if p.name.startswith("offline-run-")]
    assert len(runs) == 4 and {r.rsplit("-", 1)[1] for r in runs} == {run_id}
    assert "wandb" in json.loads((out / ".pgm-run.json").read_text())["written"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(data_root, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    p = run([sys.executable, "-m", "paligemma_cli", "train", "vqav2", "--data-root", str(data_root),
             "--output-dir", str(out), "--model-path", "tiny", "--max-steps", "4", "--batch-size", "2",
             "--gradient-accumulation-steps", "1", "--save-steps", "1", "--warmup-ratio", "0",
             "--learning-rate", "1e30"])
    text = p.stdout + p.stderr
    assert p.returncode == 1, text
    assert "Traceback" not in text and text.count("Error:") == 1
    error = text[text.index("Error:"):]
    assert "at step 2" in error and "learning rate" in error and "fp16" in error and "bad example" in error
    assert "step-00000001, is kept" in error
    assert [step_of(c) for c in list_checkpoints(out)] == [1]
    weights = adapter(latest_checkpoint(out))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "adapter_model.safetensors").exists()


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def test_disk_full_mid_run_keeps_the_last_checkpoint_and_resumes(data_root, tmp_path, tiny_model_dir):
    """A real full disk: the output dir is a 600 kB tmpfs (in a private mount namespace, so nothing
    outside this test sees it) that holds one checkpoint but not two; then it grows and --resume
    finishes the run."""
    if not _can_mount_tmpfs():
        pytest.skip("needs root and unshare/mount for a small tmpfs")
    out, report = tmp_path / "out", tmp_path / "report"
    out.mkdir()
    report.mkdir()
    pgm = [sys.executable, "-m", "paligemma_cli", "train", "vqav2", "--data-root", str(data_root),
           "--output-dir", str(out), "--model-path", "tiny", "--max-steps", "4", "--batch-size", "2",
           "--gradient-accumulation-steps", "1", "--save-steps", "1"]
    script = f"""
mount -t tmpfs -o size=600k tmpfs {out} || exit 77
{shlex.join(pgm)} > {report}/full.txt 2>&1; echo $? > {report}/rc_full
ls -A {out}/checkpoints > {report}/checkpoints_full
cp -r {out}/checkpoints/step-00000001 {report}/kept
mount -o remount,size=16m {out}
{shlex.join(pgm + ["--resume"])} > {report}/resumed.txt 2>&1; echo $? > {report}/rc_resumed
ls -A {out} {out}/checkpoints > {report}/final
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=pgm_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    full = (report / "full.txt").read_text()
    assert (report / "rc_full").read_text().strip() == "1", full
    assert "Traceback" not in full and full.count("Error:") == 1, full
    assert "Saving checkpoint step 2 failed: No space left on device." in full
    assert f"The previous checkpoint {out}/checkpoints/step-00000001 is intact." in full
    assert (report / "checkpoints_full").read_text().split() == ["step-00000001"]  # no temp folder left
    assert (report / "kept" / "trainer_state.json").exists()
    assert json.loads((report / "kept" / "trainer_state.json").read_text())["global_step"] == 1

    resumed = (report / "resumed.txt").read_text()
    assert (report / "rc_resumed").read_text().strip() == "0", resumed
    assert "Resuming from step-00000001" in resumed
    final = (report / "final").read_text().split()
    assert "adapter_model.safetensors" in final and "step-00000004" in final


class _Adapter:
    """Stands in for a PeftModel: save_pretrained writes one file, or fails like a full disk."""

    def __init__(self, fail: bool):
        self.fail = fail

    def save_pretrained(self, path):
        (Path(path) / "adapter_model.safetensors").write_bytes(b"weights" * 100)
        if self.fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_save_is_reported_and_the_previous_checkpoint_survives(tmp_path):
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    first = save_checkpoint(tmp_path, _Adapter(False), optimizer, scheduler, LoopState(global_step=1), keep=2)
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    with pytest.raises(PgmError) as info:
        save_checkpoint(tmp_path, _Adapter(True), optimizer, scheduler, LoopState(global_step=2), keep=2)
    error = str(info.value)
    assert "checkpoint step 2 failed: No space left on device" in error
    assert f"previous checkpoint {first} is intact" in error and "--resume" in error
    assert list_checkpoints(tmp_path) == [first]
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]


def test_a_killed_overwrite_is_undone_and_resume_walks_back_past_damaged_checkpoints(data_root, reference,
                                                                                     tmp_path):
    """A finished run whose newest checkpoints were damaged afterwards (step 8's adapter truncated, a
    step 10 whose trainer_state.json is not JSON); a `--overwrite` of it killed mid-step 1, before
    it saved anything. The next `--resume` puts the earlier run back, says so, skips the damaged
    checkpoints naming each, continues from step 6 and ends bit-identical to the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    weights = out / "checkpoints" / "step-00000008" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    shutil.copytree(out / "checkpoints" / "step-00000006", out / "checkpoints" / "step-00000010")
    (out / "checkpoints" / "step-00000010" / "trainer_state.json").write_text('{"global_step": 10,')

    p = run(train_cmd(data_root, out, "--overwrite", "--dataloader-workers", "1"), PGM_TEST_KILL_AT_STEP="1")
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr
    assert (out / ".pgm-previous" / "checkpoints").is_dir()  # set aside, not deleted
    killed = json.loads((out / ".pgm-run.json").read_text())["unfinished"]["pid"]

    p = run(train_cmd(data_root, out, "--resume", "--dataloader-workers", "1"))
    text = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, text
    assert f"Removed what an interrupted pgm train (process {killed}) left unfinished in {out}: run_config.json." in text
    assert "Restored the earlier pgm train output it had set aside: train_log.jsonl, checkpoints" in text
    assert "Skipped checkpoint step-00000010: trainer_state.json is not valid JSON" in text
    assert "Skipped checkpoint step-00000008: adapter_model.safetensors is truncated" in text
    assert "Resuming from step-00000006 (step 6 of 8)" in text
    ref, got = adapter(reference), adapter(out)
    assert not [k for k in ref if not torch.equal(ref[k], got[k])]
    assert [r["step"] for r in log_records(out)] == list(range(1, STEPS + 1))
    assert [step_of(c) for c in list_checkpoints(out)] == [6, 8]  # the damaged ones replaced or removed
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".pgm-run.json"]


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "trainer_state.json").write_text("{not json"), "trainer_state.json is not valid JSON"),
    (lambda c: (c / "trainer_state.json").write_text('{"steps": 3}'), "trainer_state.json does not hold"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "scheduler.pt").write_bytes((c / "scheduler.pt").read_bytes()[:-30]),
     "scheduler.pt is truncated or damaged"),
    (lambda c: (c / "adapter_model.safetensors").write_bytes(b"\x00" * 4), "adapter_model.safetensors is damaged"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, reason):
    from paligemma_cli.train.checkpoint import checkpoint_problem, require_resumable

    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    first = save_checkpoint(tmp_path, _Adapter(False), optimizer, scheduler, LoopState(global_step=1), keep=2)
    (first / "adapter_model.safetensors").write_bytes(_safetensors())
    second = save_checkpoint(tmp_path, _Adapter(False), optimizer, scheduler, LoopState(global_step=2), keep=2)
    (second / "adapter_model.safetensors").write_bytes(_safetensors())
    assert checkpoint_problem(second) is None and require_resumable(tmp_path) == second
    damage(second)
    assert checkpoint_problem(second).startswith(reason)
    assert require_resumable(tmp_path) == first
    damage(first)
    with pytest.raises(PgmError, match=f"no complete checkpoint .*step-00000002: {reason}"):
        require_resumable(tmp_path)


def _safetensors() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.ones(3)})
