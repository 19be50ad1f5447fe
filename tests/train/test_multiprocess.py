"""Two processes under `accelerate launch` on CPU (DDP over gloo), 4-bit QLoRA on the tiny model.

On a machine without GPUs, `--multi_gpu --num_processes 2` makes accelerate start two torchrun
workers that fall back to the CPU and the gloo backend; `--cpu` with several processes would
need mpirun (`--mpirun_hostfile`), which a plain machine lacks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Started in every process (sitecustomize): the libraries see offline mode as they import
# huggingface_hub, then the variable goes so that pgm's push check passes, and HfApi records each
# process's calls in a file instead of reaching the hub (which cannot be reached from here).
FAKE_HUB = """
import json, os
import huggingface_hub
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)

class HfApi:
    def _record(self, call, repo_id, **more):
        with open(os.environ["FAKE_HUB_LOG"], "a") as fh:
            fh.write(json.dumps({"call": call, "repo_id": repo_id, "rank": os.environ.get("RANK"), **more}) + "\\n")

    def create_repo(self, repo_id, **kwargs):
        self._record("create_repo", repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        self._record("create_commit", repo_id, files=sorted(op.path_in_repo for op in operations))
        return type("CommitInfo", (), {"commit_url": "https://huggingface.co/" + repo_id + "/commit/1"})()

huggingface_hub.HfApi = HfApi
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_shard_the_data_and_write_once(synthetic_data, tiny_model_dir, tmp_path):
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch without the gloo backend")
    data = synthetic_data("vqav2", 7)  # 10 questions
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "paligemma_cli", "train", "vqav2", "--model-path", "tiny", "--data-root", str(data),
           "--output-dir", str(out), "--num-epochs", "1", "--batch-size", "2",
           "--gradient-accumulation-steps", "2", "--logging-steps", "1", "--save-steps", "100",
           "--dataloader-workers", "1", "--group-by-length",  # each process's worker builds its shard
           "--report-to", "tensorboard", "--push-to-hub", "someone/two-processes"]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAKE_HUB)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "HF_TOKEN": "hf_fake", "FAKE_HUB_LOG": str(tmp_path / "hub.jsonl")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text

    # Sharded: 10 questions in batches of 2 over 2 processes is 3 micro-batches each (accelerate
    # pads the last round), so 2 optimiser steps per epoch; unsharded it would be 5 -> 3 steps.
    # Effective batch = 2 per micro-batch x 2 accumulated x 2 processes.
    assert "2 steps, effective batch 8" in proc.stdout, text
    assert json.loads((out / "run_config.json").read_text())["processes"] == 2

    # Shown and logged once, by the main process.
    assert proc.stdout.count("Training vqav2 on") == 1
    assert proc.stdout.count("pgm train") == 1
    for step in (1, 2):
        assert proc.stdout.count(f"step {step}  loss") == 1, text
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]

    # One checkpoint (the final step), written by one process, and the final adapter.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert (out / "adapter_model.safetensors").exists()
    assert "Traceback" not in text

    # Tracked and pushed once, by the main process: one TensorBoard event file, one commit.
    from tests.train.test_trackers import assert_events_match_log

    assert len(list((out / "tensorboard").iterdir())) == 1
    assert_events_match_log(out)
    calls = [json.loads(line) for line in (tmp_path / "hub.jsonl").read_text().splitlines()]
    assert [(c["call"], c["rank"]) for c in calls] == [("create_repo", "0"), ("create_commit", "0")], calls
    assert "adapter_model.safetensors" in calls[1]["files"] and "README.md" in calls[1]["files"]
