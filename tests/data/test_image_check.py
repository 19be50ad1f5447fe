"""The up-front image check: found and named before the first step, cached by path/size/mtime,
shared between processes, and skippable (a bad image then ends the run in one line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paligemma_cli.data.image_check import check_images, combine
from paligemma_cli.errors import PgmError

GARBAGE = b"\xff\xd8\xff\xe0 not really a jpeg"


def pgm(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "paligemma_cli", *map(str, args)], capture_output=True,
                          text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)


def corrupt_keeping_size(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes((GARBAGE * (size // len(GARBAGE) + 1))[:size])


def test_corrupt_image_among_many_is_named_before_the_first_step(synthetic_data, tiny_model_dir, tmp_path):
    data = Path(shutil.copytree(synthetic_data("vqav2", 40), tmp_path / "data"))
    images = sorted((data / "train2014").iterdir())
    bad = images[23]
    bad.write_bytes(GARBAGE)
    out = tmp_path / "run"
    result = pgm("train", "vqav2", "--model-path", "tiny", "--data-root", data, "--max-steps", "1",
                 "--output-dir", out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("Error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert bad.name in result.stderr and "(1 of 40 images)" in result.stderr, result.stderr
    assert "Checking 40 image files" in result.stdout  # the check said what it was doing
    assert "step 1" not in result.stdout and not (out / "train_log.jsonl").exists()


def test_cache_trusts_path_size_mtime_and_rechecks_a_changed_file(synthetic_data, tmp_path):
    data = Path(shutil.copytree(synthetic_data("vqav2", 30), tmp_path / "data"))
    paths = [str(p) for p in sorted((data / "train2014").iterdir())]
    cache = tmp_path / "cache.sqlite"

    first = check_images(paths, cache=cache, threads=4)
    assert (first.checked, first.cached, first.missing, first.corrupt) == (30, 0, [], [])
    assert check_images(paths, cache=cache).cached == 30  # a rerun opens nothing

    # Same path, size and mtime: the cache is trusted, so the change goes unseen (its documented key).
    target = Path(paths[7])
    st = target.stat()
    corrupt_keeping_size(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check_images(paths, cache=cache).corrupt == []
    # A new mtime makes it a different file: opened again, and found.
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = check_images(paths, cache=cache)
    assert again.corrupt == [str(target)] and again.cached == 29
    with pytest.raises(PgmError, match=rf"{target.name} is unreadable \(1 of 30 images\)"):
        combine([again], len(paths))
    # A file that vanished is missing, not cached.
    os.remove(paths[3])
    assert check_images(paths, cache=cache).missing == [paths[3]]


def test_processes_check_disjoint_shares_and_combine(synthetic_data, tmp_path):
    data = Path(shutil.copytree(synthetic_data("vqav2", 30), tmp_path / "data"))
    paths = [str(p) for p in sorted((data / "train2014").iterdir())]
    (Path(paths[4])).write_bytes(GARBAGE)
    (Path(paths[11])).unlink()
    shares = [check_images(paths, rank=r, world=3, cache=tmp_path / "c.sqlite") for r in range(3)]
    assert [s.checked for s in shares] == [10, 10, 10]
    assert sum(len(s.corrupt) for s in shares) == 1 and sum(len(s.missing) for s in shares) == 1
    with pytest.raises(PgmError, match=r"is missing \(1 of 30 images\)"):  # missing files are named first
        combine(shares, len(paths))


def test_skip_image_check_bad_image_mid_run_is_one_error_line_and_keeps_checkpoints(
        synthetic_data, tiny_model_dir, tmp_path):
    from paligemma_cli.model.loader import EpochSampler
    from paligemma_cli.tasks import get_task

    data = Path(shutil.copytree(synthetic_data("coco", 16), tmp_path / "data"))
    examples = get_task("coco").load_official(data, "train2017")
    last = examples[EpochSampler(len(examples), 42).order()[-1]]  # in the 8th and last batch
    Path(last.image).write_bytes(GARBAGE)
    out = tmp_path / "run"
    result = pgm("train", "coco", "--model-path", "tiny", "--data-root", data, "--skip-image-check",
                 "--batch-size", "2", "--gradient-accumulation-steps", "1", "--save-steps", "1",
                 "--output-dir", out)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert text.count("Error:") == 1 and "Traceback" not in text, text
    assert Path(last.image).name in result.stderr, text
    assert "Checking" not in result.stdout  # skipped
    # Loaders fetch a batch or more ahead, so the error surfaces a step or few early; the
    # checkpoints written before it are kept.
    saved = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("checkpoint ")]
    assert saved and Path(saved[-1]).is_dir(), text
