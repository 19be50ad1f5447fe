"""W&B when asked: offline mode logs config and loss, and the API key never appears in any output."""

import pytest

from paligemma_cli.config import build_run
from paligemma_cli.train.loop import train

pytestmark = pytest.mark.slow

SECRET = "wandb_v1_0123456789abcdefSECRETSECRET0123456789abcdef"


def test_wandb_offline_logs_config_and_loss(tmp_path, monkeypatch, capfd, synthetic_data, tiny_model_dir):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    out = tmp_path / "run"
    run = build_run(dict(task="gqa", model_path="tiny", data_root=str(synthetic_data("gqa")), output_dir=str(out),
                         batch_size=2, gradient_accumulation_steps=1, max_steps=2, logging_steps=1,
                         use_wandb=True, wandb_project="pgm-test"))
    train(run)
    runs = list(out.rglob("offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))
    # Offline runs keep everything in one protobuf log (wandb-core's format); its records carry
    # the keys as plain strings, which is what `wandb sync` later uploads.
    log = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    for key in (b"learning_rate", b"lora_rank", b"train/loss", b"train/lr", b"pgm-test"):
        assert key in log, key
    assert SECRET.encode() not in log
    captured = capfd.readouterr()
    everything = captured.out + captured.err + "".join(
        p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".txt", ".log"))
    assert SECRET not in everything
