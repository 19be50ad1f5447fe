"""bench/gpu_check.py runs end to end before a GPU is ever lent: --tiny on CPU, as a subprocess."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
ROWS = ["train:pg1-224:4bit", "train:pg1-448:8bit", "generate:pg1-448:4bit"]


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--steps", "2",
                           "--rows", ",".join(ROWS), "--break-row", ROWS[1]],
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_rows_run_through_pgms_engine_and_sit_beside_the_estimate(check_run):
    _, report, _ = check_run
    assert [r["row"] for r in report["rows"]] == ROWS
    train = report["rows"][0]
    assert train["status"] == "ok" and train["steps"] == 2 and math.isfinite(train["final_loss"])
    assert len(train["losses"]) == 2
    assert train["samples_per_s"] > 0 and train["tokens_per_s"] > train["samples_per_s"]
    # 32 px / patch 8 = 16 image tokens; the estimate describes the very batch trained on
    assert train["image_tokens"] == 16 and train["seq_len"] > 16
    est = train["estimate"]
    assert est["seq_len"] == train["seq_len"] and est["answer_positions"] == train["answer_positions"]
    assert est["setup"]["quantization"] == "4bit" and est["setup"]["batch_size"] == 4
    assert {"activations", "optimizer states", "LoRA parameters"} <= set(est["parts"])
    assert est["allocated"] == est["total"] - est["parts"]["CUDA context + allocator"]
    assert "measured" not in train  # no CUDA here: no peak is made up
    gen = report["rows"][2]
    assert gen["status"] == "ok" and gen["max_new_tokens"] == 16
    assert gen["batches"]["1"]["examples"] == 2 and gen["batches"]["16"]["examples"] == 32
    assert gen["speedup"] == pytest.approx(gen["batches"]["16"]["examples_per_s"] / gen["batches"]["1"]["examples_per_s"])
    for part in ("imports", "build pg1-224", "build pg1-448", "data 32px", "data 64px", *ROWS, "total"):
        assert report["timings"][part] >= 0, part


@pytest.mark.slow
def test_a_failing_row_is_recorded_and_the_rest_still_run(check_run):
    proc, report, md = check_run
    broken = report["rows"][1]
    assert broken["status"] == "error" and "missing-model does not exist" in broken["error"]
    assert report["rows"][2]["status"] == "ok"  # the row after it still ran
    lines = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines[ROWS[0]].split(" | ")[1] == "ok" and "samples/s" in lines[ROWS[0]]
    assert lines[ROWS[1]].split(" | ")[1] == "error" and "does not exist" in lines[ROWS[1]]
    assert "at batch 1" in lines[ROWS[2]]
    assert md in proc.stdout  # the table is printed too


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (importing it runs nothing and imports no torch)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_rows_are_skipped_when_the_budget_runs_out(gpu_check):
    row = gpu_check.ROWS[0]
    assert gpu_check.fits_budget(row, row.need_s + gpu_check.BUILD_S, built=set())
    assert not gpu_check.fits_budget(row, row.need_s + gpu_check.BUILD_S - 1, built=set())
    assert gpu_check.fits_budget(row, row.need_s, built={row.model})  # its model is already built
    # a row of the same kind that ran longer than the guess raises what the next one needs
    assert not gpu_check.fits_budget(row, row.need_s, built={row.model}, observed={"train": row.need_s + 1})
    assert gpu_check.fits_budget(row, row.need_s, built={row.model}, observed={"generate": row.need_s + 1})


@pytest.mark.slow
def test_cuda_peaks_are_put_beside_each_part_and_tabled(gpu_check, check_run):
    """The CUDA branch's arithmetic and table, fed what a GPU would report (none exists here)."""
    from paligemma_cli.diagnose import memory
    from paligemma_cli.model.presets import preset_config

    est = memory.estimate(preset_config("google/paligemma-3b-pt-448"),
                          memory.TrainSetup(max_length=12, answer_tokens=5))
    resident = est.weights_quantized + est.weights_unquantized + est.kbit_upcast + est.lora
    base = 3 * 1024 ** 2  # left allocated by an earlier row: not this row's
    got = gpu_check.compare(est, base, base + resident, base + 2 * (est.total - est.overhead),
                            reserved=est.total, device_used=est.total // 2)
    parts = {c["part"].split(" (")[0]: c for c in got["compare"]}
    assert parts["resident before step 1"]["ratio"] == 1.0
    assert parts["peak allocated"]["ratio"] == 2.0
    assert parts["step peak above resident"]["measured"] == 2 * (est.total - est.overhead) - resident
    assert parts["device memory used"]["ratio"] == pytest.approx(0.5, abs=1e-9)
    _, report, _ = check_run
    row = {**report["rows"][0], **got, "estimate": {**est.to_dict(), "allocated": est.total - est.overhead}}
    line = next(x for x in gpu_check.markdown({**report, "rows": [row]}).splitlines() if x.startswith("| train"))
    cells = line.split(" | ")
    assert cells[5] == "2.00"
    assert cells[4] == f"{gpu_check._size(2 * (est.total - est.overhead))} / {gpu_check._size(est.total - est.overhead)}"


@pytest.mark.parametrize("model,quantization", [("pg1-448", "4bit"), ("pg2-448", "8bit")])
def test_the_estimate_it_reports_is_what_memory_estimate_prints(gpu_check, model, quantization):
    from typer.testing import CliRunner

    from paligemma_cli.cli import app
    from paligemma_cli.model.presets import preset_config

    name = gpu_check.MODELS[model]
    geo = {"seq_len": 1038, "image_tokens": 1024, "answer_positions": 5}
    est, command = gpu_check.estimate_for(preset_config(name), name, quantization, geo)
    result = CliRunner().invoke(app, command, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["estimate"] == json.loads(json.dumps(est.to_dict()))  # tuples as lists
    assert est.seq_len == 1038 and est.answer_positions == 5 and est.setup.quantization == quantization


@pytest.mark.parametrize("name", ["google/paligemma-3b-pt-224", "google/paligemma2-3b-pt-448"])
def test_the_models_it_builds_have_the_real_shapes(name):
    """What the GPU check trains is the preset's architecture, parameter for parameter (built on the
    meta device: no memory), with the real processor geometry and vocabulary size."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    from paligemma_cli.diagnose import memory
    from paligemma_cli.model.presets import VOCAB, preset_config
    from paligemma_cli.model.tiny import config_from_spec

    spec = preset_config(name)
    config, processor = config_from_spec(spec)
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {p.name: p.shape for p in memory.layout(spec)}
    # Gemma's 256,000 tokens + <image> + 1024 <loc> + 128 <seg>, as the published tokenizer has
    assert len(processor.tokenizer) == 257_153 <= VOCAB == config.text_config.vocab_size
    assert processor.image_seq_length == memory.image_tokens(spec) == config.text_config.num_image_tokens
    assert processor.tokenizer.convert_ids_to_tokens(config.image_token_index) == "<image>"
