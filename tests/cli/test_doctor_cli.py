"""`pgm doctor` end to end: table and --json, exit codes, --error, and no token in any output."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from paligemma_cli.cli import app

HF_SECRET = "hf_FAKEsecretTOKENvalue0123456789abcdef"
WANDB_SECRET = "wandbFAKEsecret0123456789abcdef01234567"
OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
       "capacity of 23.65 GiB of which 11.06 MiB is free.")


@pytest.fixture
def runner(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_SECRET)
    return CliRunner()


def invoke(runner, *args, **kw):
    return runner.invoke(app, list(args), catch_exceptions=False, **kw)


def no_secret(text: str) -> None:
    for secret in (HF_SECRET, WANDB_SECRET):
        assert secret not in text
        assert secret[:8] not in text  # not even a prefix


def test_doctor_json_reports_every_check_and_no_token(runner, tmp_path):
    result = invoke(runner, "doctor", "--json", "--model-path", "tiny", "--output-dir", str(tmp_path / "run"))
    no_secret(result.output)
    data = json.loads(result.stdout)
    assert result.exit_code == (0 if data["ok"] else 1)
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["Hugging Face token"]["detail"] == "present (HF_TOKEN)"
    assert checks["W&B credentials"]["detail"] == "present (WANDB_API_KEY)"
    assert checks["bitsandbytes NF4 matmul"]["status"] == "PASS"
    assert all(c["status"] in ("PASS", "WARN", "FAIL") for c in data["checks"])


def test_doctor_table_and_online_offline_warn(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke(runner, "doctor", "--online", "--output-dir", str(tmp_path))
    no_secret(result.output)
    assert "Hub access" in result.output and "HF_HUB_OFFLINE" in result.output
    assert "PASS" in result.output and "WARN" in result.output
    assert result.exit_code in (0, 1)


def test_doctor_exits_1_when_a_check_fails(runner, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes fails
    result = invoke(runner, "doctor", "--json", "--model-path", "tiny", "--output-dir", str(tmp_path))
    data = json.loads(result.stdout)
    assert result.exit_code == 1 and not data["ok"]
    assert any(c["status"] == "FAIL" and c["name"] == "bitsandbytes" for c in data["checks"])


def test_error_from_stdin_gives_the_oom_flags(runner):
    result = invoke(runner, "doctor", "--error", "-", "--model-path", "google/paligemma-3b-pt-448",
                    "--batch-size", "4", input=OOM)
    assert result.exit_code == 0
    assert "CUDA out of memory" in result.output
    assert "--batch-size 2 --gradient-accumulation-steps 8" in " ".join(result.output.split())


def test_error_file_json_and_redaction(runner, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(f"Authorization: Bearer {HF_SECRET}\n401 Client Error. Cannot access gated repo for url x.\n")
    result = invoke(runner, "doctor", "--error", str(log), "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 0 and data["recognised"]
    assert data["diagnoses"][0]["key"] == "hub-401"
    no_secret(result.output)


def test_error_unknown_text_exits_1_and_missing_file_is_one_red_line(runner, tmp_path):
    result = invoke(runner, "doctor", "--error", "-", input="everything is fine\n")
    assert result.exit_code == 1 and "No known error pattern" in result.output
    result = invoke(runner, "doctor", "--error", str(tmp_path / "nope.log"))
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output


def test_help_stays_light():
    code = "import sys, paligemma_cli.cli; print(sorted(m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_reads_at_80_columns(monkeypatch, tmp_path):
    """This machine's real checks at 80 columns: a one-row-per-check table, then each problem's fix
    with its words whole and each command on one line of its own; at most 40 terminal rows."""
    import io
    import math

    from rich.cells import cell_len
    from rich.console import Console

    from paligemma_cli.cli import doctor as doctor_cli
    from paligemma_cli.diagnose import doctor as engine

    screen = io.StringIO()
    monkeypatch.setattr(doctor_cli, "console", Console(width=80, file=screen, color_system=None))
    seen = []
    real_run_checks = engine.run_checks
    monkeypatch.setattr(engine, "run_checks", lambda opts: seen.extend(real_run_checks(opts)) or seen)
    result = CliRunner().invoke(app, ["doctor", "--output-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code in (0, 1)
    lines = screen.getvalue().splitlines()
    rows = sum(max(1, math.ceil(cell_len(line.rstrip()) / 80)) for line in lines)  # as a terminal wraps
    assert rows <= 40, screen.getvalue()
    for check in seen:  # the table: one row per check, the status in its own column
        row = re.compile(rf"{re.escape(check.name)} {{2,}}{check.status} ")
        assert sum(bool(row.match(line)) for line in lines) == 1, (check.name, screen.getvalue())
    problems = [c for c in seen if c.status != "PASS" and (c.fix or c.commands)]
    assert problems  # this machine has no GPU: at least the GPU check warns
    words = " ".join(lines).split()
    for check in problems:
        fix = check.fix.split()
        assert any(words[i:i + len(fix)] == fix for i in range(len(words))), (check.fix, screen.getvalue())
        for command in check.commands:
            assert f"    {command}" in lines, (command, screen.getvalue())
