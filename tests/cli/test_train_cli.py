"""`pgm train` and the CLI shell: fast help, and bad input as one clear line with no traceback."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PGM = [sys.executable, "-m", "paligemma_cli"]


def pgm(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(PGM + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_one_line_error(result, *needles):
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert out.count("Error:") == 1, out
    for needle in needles:
        assert needle in out, out


def test_help_is_fast_and_lists_commands():
    import time

    start = time.time()
    result = pgm("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "merge", "doctor", "memory-estimate", "data"):
        assert command in result.stdout
    assert time.time() - start < 10  # no torch import on the help path (3-4 s alone)
    code = "import sys, paligemma_cli.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_version_and_short_help():
    assert pgm("--version").stdout.startswith("pgm ")
    result = pgm("train", "-h")
    assert result.returncode == 0
    for flag in ("--model-path", "--output-dir", "--num-epochs", "--batch-size", "--learning-rate",
                 "--gradient-accumulation-steps", "--max-train-samples", "--max-eval-samples", "--max-length",
                 "--use-wandb", "--wandb-project", "--quantization", "--lora-rank", "--config", "--resume",
                 "--report-to", "--push-to-hub", "--hub-private"):
        assert flag in result.stdout, flag


def test_report_to_given_twice_adds_up_and_a_contradiction_is_one_line(tmp_path):
    # both values arrive (a last-wins flag would see only "none" and accept it)
    assert_one_line_error(pgm("train", "gqa", "--data-root", tmp_path, "--report-to", "tensorboard",
                              "--report-to", "none"), "--report-to none excludes tensorboard")
    assert_one_line_error(pgm("train", "gqa", "--data-root", tmp_path, "--use-wandb", "--report-to", "tensorboard"),
                          "--use-wandb and --report-to tensorboard disagree")


def test_unknown_task_lists_supported(tmp_path):
    assert_one_line_error(pgm("train", "vqa3", "--data-root", tmp_path), "Unknown task 'vqa3'",
                          "coco, docvqa, gqa, vqav2")


def test_missing_official_file_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    before = tree_hash(tmp_path)
    result = pgm("train", "gqa", "--model-path", "tiny", "--data-root", tmp_path / "data",
                 "--output-dir", tmp_path / "out")
    assert_one_line_error(result, "train_balanced_questions.json")


def test_missing_images_named_and_counted(tmp_path):
    from paligemma_cli.tasks import get_task

    get_task("docvqa").write_synthetic(tmp_path / "d", 5)
    docs = sorted((tmp_path / "d" / "train" / "documents").iterdir())
    for p in docs[:3]:
        p.unlink()
    before = tree_hash(tmp_path / "d")
    result = pgm("train", "docvqa", "--model-path", "tiny", "--data-root", tmp_path / "d",
                 "--output-dir", tmp_path / "out")
    assert_one_line_error(result, docs[0].name, "and 2 more", "(3 of 5 images)")
    assert tree_hash(tmp_path / "d") == before


def test_corrupt_image_named(tmp_path):
    from paligemma_cli.tasks import get_task

    get_task("coco").write_synthetic(tmp_path / "c", 4)
    bad = sorted((tmp_path / "c" / "train2017").iterdir())[1]
    bad.write_bytes(b"\x89PNG broken")
    result = pgm("train", "coco", "--model-path", "tiny", "--data-root", tmp_path / "c",
                 "--output-dir", tmp_path / "out")
    assert_one_line_error(result, bad.name, "unreadable")


def test_zero_train_samples(tmp_path):
    assert_one_line_error(pgm("train", "vqav2", "--max-train-samples", 0, "--data-root", tmp_path),
                          "--max-train-samples must be >= 1")


def test_foreign_output_dir_is_refused_and_untouched(tmp_path, synthetic_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = tree_hash(out)
    result = pgm("train", "vqav2", "--model-path", "tiny", "--data-root", synthetic_data("vqav2"),
                 "--output-dir", out)
    assert_one_line_error(result, str(out), "--overwrite")
    assert tree_hash(out) == before
