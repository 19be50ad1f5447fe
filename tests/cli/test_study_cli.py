"""`pgm study` end to end through the console entry point."""

import os
import subprocess
import sys

import yaml


def _pgm(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "paligemma_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


def test_study_writes_the_report_and_a_rerun_does_nothing_new(tmp_path, trained_experts):
    spec = {"base_model": "tiny", "max_eval_samples": 6,
            "experts": {t: {"path": str(a), "data_root": str(d)} for t, (a, d) in trained_experts.items()},
            "grid": [{"method": "ties", "density": [0.3, 0.6]}]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    first = _pgm(["study", "study.yaml", "-o", "out", "--quantization", "none"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[10/10] ties density=0.6 on gqa" in first.stdout
    assert "| expert vqav2 |" in first.stdout and "mean normalised" in first.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "normalized.png", "report.md", "results.csv", "study.json"]
    again = _pgm(["study", "study.yaml", "-o", "out", "--quantization", "none"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[" not in again.stdout.split("# Merging study")[0]  # no cell ran again
    assert (tmp_path / "out" / "report.md").read_text() in again.stdout.replace("\r", "")
