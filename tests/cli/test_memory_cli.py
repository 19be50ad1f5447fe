"""`pgm memory-estimate` end to end: table, --json, --gpu-memory, --measure, errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from paligemma_cli.cli import app
from paligemma_cli.diagnose import memory
from paligemma_cli.model.presets import preset_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_seed_configuration_table():
    result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-448", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    expected = memory.estimate(preset_config("google/paligemma-3b-pt-448"), memory.TrainSetup())
    for part in ("base weights, 4bit", "LoRA parameters", "optimizer states", "activations", "total (peak)"):
        assert part in result.output
    assert f"{expected.total:,}" in result.output


def test_json_flags_reach_the_estimate():
    result = invoke("memory-estimate", "--model-path", "google/paligemma2-3b-pt-224", "--batch-size", "2",
                    "--lora-rank", "8", "--lora-targets", "language,vision", "--no-gradient-checkpointing",
                    "--optimizer", "adamw_8bit", "--max-length", "128", "--answer-tokens", "9", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    setup = memory.TrainSetup(batch_size=2, lora_rank=8, lora_targets=("language", "vision"),
                              gradient_checkpointing=False, optimizer="adamw_8bit", max_length=128,
                              answer_tokens=9)
    expected = memory.estimate(preset_config("google/paligemma2-3b-pt-224"), setup)
    assert data["estimate"]["total"] == expected.total
    assert data["estimate"]["lora_params"] == expected.lora_params
    assert data["estimate"]["seq_len"] == 256 + 128
    assert data["estimate"]["answer_positions"] == 9
    assert data["estimate"]["logits"] == 2 * 9 * (12 + 4) * 257216  # Gemma 2 soft-caps its logits


def test_answer_tokens_default_to_max_length_and_stop_there():
    def estimate(*args):
        result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-224", "--json",
                        "--no-gradient-checkpointing", *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["estimate"]

    default, short, capped = estimate(), estimate("--answer-tokens", "5"), estimate("--answer-tokens", "999")
    assert default["answer_positions"] == capped["answer_positions"] == 64 and short["answer_positions"] == 5
    assert default["total"] == capped["total"] > short["total"]
    assert invoke("memory-estimate", "--answer-tokens", "0").exit_code != 0


def test_gpu_memory_says_what_fits():
    result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-448", "--gpu-memory", "24GB")
    assert result.exit_code == 0
    assert "--batch-size 4 --gradient-accumulation-steps 4" in " ".join(result.output.split())
    result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-448", "--gpu-memory", "8GB")
    assert "--batch-size 2 --gradient-accumulation-steps 8" in " ".join(result.output.split())
    result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-896", "--gpu-memory", "2GB", "--json")
    assert json.loads(result.stdout)["fit"]["fits"] is False


def test_resolution_override():
    result = invoke("memory-estimate", "--model-path", "google/paligemma-3b-pt-448", "--resolution", "224", "--json")
    assert json.loads(result.stdout)["estimate"]["image_tokens"] == 256


def test_errors_are_one_red_line():
    result = invoke("memory-estimate", "--model-path", "someone/unknown", "--batch-size", "2")
    assert result.exit_code == 1 and "google/paligemma-3b-pt-448" in result.output
    result = invoke("memory-estimate", "--gpu-memory", "plenty")
    assert result.exit_code == 1 and "--gpu-memory" in result.output
    result = invoke("memory-estimate", "--lora-targets", "everything")
    assert result.exit_code == 1 and "--lora-targets" in result.output


def test_measure_on_cpu_prints_the_measured_peak(pgm_home):
    result = invoke("memory-estimate", "--model-path", "tiny", "--batch-size", "2", "--measure", "--steps", "2",
                    "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout[result.stdout.index("{"):])
    measured = data["measured"]
    assert measured["device"] == "cpu" and measured["reserved"] is None
    assert measured["weights"] == measured["estimate_weights"]  # to the byte
    # the estimate is taken for the batch the steps ran: its length and answer positions
    assert 0 < measured["answer_positions"] < measured["seq_len"] - data["estimate"]["image_tokens"]
    assert 0.9 < measured["estimate_allocated"] / measured["peak"] < 1.1
