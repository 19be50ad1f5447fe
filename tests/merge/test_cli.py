"""`pgm merge` through the real CLI: bad input is one line naming the problem, and writes nothing."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from paligemma_cli.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, ["merge", *map(str, args)])
    return result, result.output  # click >= 8.2: stdout and stderr together


def assert_one_line_error(result, text, out, *needles):
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.exit_code == 1, text
    assert len(lines) == 1, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".pgm-" in p.name]


@pytest.fixture
def two(merge_inputs):
    return ["--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
            "--model", merge_inputs["adapter_b"]]


def test_unknown_mode_lists_the_methods(two, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke(*two, "--output", out, "--mode", "fancy"), out,
                          "--mode 'fancy'", "linear, task_arithmetic, ties, dare_ties, dare_linear, "
                          "magnitude_prune, layerswap, slerp")


@pytest.mark.parametrize("density", ["0", "-0.5", "1.5"])
def test_density_outside_zero_one(two, tmp_path, density):
    out = tmp_path / "m"
    assert_one_line_error(*invoke(*two, "--output", out, "--density", density), out, "--density must be in (0, 1]")


def test_density_with_a_method_that_does_not_trim(two, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke(*two, "--output", out, "--mode", "linear", "--density", "0.5"), out,
                          "--density has no effect with --mode linear")


def test_fewer_than_two_models(merge_inputs, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                                  "--output", out), out, "at least two models (got 1)")


def test_overwrite_replaces_only_an_earlier_pgm_merge(two, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # the user's folder is refused either way, and left alone
        result, text = invoke(*two, "--output", out, *extra)
        assert result.exit_code == 1 and "keep.txt, which pgm did not write" in text, text
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    result, text = invoke(*two, "--output", tmp_path / "new")
    assert result.exit_code == 0, text
    before = folder_bytes(tmp_path / "new")
    result, text = invoke(*two, "--output", tmp_path / "new", "--mode", "dare_ties", "--seed", "3")
    assert result.exit_code == 1 and "holds a previous pgm merge" in text and "--overwrite" in text
    assert folder_bytes(tmp_path / "new") == before
    result, text = invoke(*two, "--output", tmp_path / "new", "--overwrite", "--mode", "dare_ties", "--seed", "3")
    assert result.exit_code == 0, text
    assert "conflicts" in text and json.loads((tmp_path / "new" / "pgm_merge.json").read_text())["mode"] == "dare_ties"
    assert not [p for p in (tmp_path / "new").iterdir() if p.name.startswith(".pgm-") and p.name != ".pgm-run.json"]

    (tmp_path / "file").write_text("a file")
    result, text = invoke(*two, "--output", tmp_path / "file", "--overwrite")
    assert result.exit_code == 1 and "is a file" in text and (tmp_path / "file").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m", "new"]  # nothing hidden beside them


def test_models_of_another_architecture(merge_inputs, tiny_pg2_dir, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["noisy_1"],
                                  "--model", tiny_pg2_dir, "--output", out), out,
                          str(tiny_pg2_dir), "gemma2", "first differing tensor: language_model.model.layers.0.")


def test_models_with_a_differently_shaped_tensor(merge_inputs, tmp_path):
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    shutil.copytree(merge_inputs["noisy_2"], odd)
    state = load_file(odd / "model.safetensors")
    state["language_model.model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 64)
    save_file(state, odd / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "m"
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["noisy_1"],
                                  "--model", odd, "--output", out), out,
                          "language_model.model.layers.1.mlp.up_proj.weight has shape [96, 64], the base [128, 64]")


def test_adapter_trained_on_another_base(merge_inputs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(merge_inputs["adapter_b"], other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "google/paligemma-3b-pt-224"
    (other / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "m"
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                                  "--model", other, "--output", out), out,
                          "was trained on google/paligemma-3b-pt-224", "--skip-base-check")
    result, text = invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                          "--model", other, "--output", out, "--skip-base-check")
    assert result.exit_code == 0, text


def test_missing_input_and_output_flags(merge_inputs, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", merge_inputs["adapter_a"],
                                  "--model", tmp_path / "nope", "--output", out), out, "nope does not exist")
    assert_one_line_error(*invoke("--base-model", merge_inputs["base"], "--model", "a", "--model", "b"), out,
                          "--output is required")


def test_original_flags_and_adapter_output(merge_inputs, tmp_path):
    out = tmp_path / "lora"
    result, text = invoke("--base-model", merge_inputs["base"], "--model-a", merge_inputs["adapter_a"],
                          "--model-b", merge_inputs["adapter_b"], "--output", out, "--mode", "ties",
                          "--density", "0.3", "--output-format", "adapter", "--rank", "3")
    assert result.exit_code == 0, text
    assert "relative error" in text and (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3


def folder_bytes(folder):
    """Every file's bytes; pgm_merge.json without its timings (seconds differ run to run)."""
    out = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name == "pgm_merge.json":
            recipe = json.loads(data)
            for stats in recipe["stats"].values():
                stats.pop("seconds")
            data = json.dumps(recipe, sort_keys=True).encode()
        out[path.name] = data
    return out


def test_method_as_argument_equals_mode_flag(two, tmp_path):
    by_argument, by_flag = tmp_path / "arg", tmp_path / "flag"
    result, text = invoke("ties", *two, "--density", "0.3", "-o", by_argument)
    assert result.exit_code == 0, text
    result, text = invoke(*two, "--mode", "ties", "--density", "0.3", "-o", by_flag)
    assert result.exit_code == 0, text
    files = folder_bytes(by_argument)
    assert "model.safetensors" in files and json.loads(files["pgm_merge.json"])["mode"] == "ties"
    assert files == folder_bytes(by_flag)
    result, text = invoke("ties", *two, "--mode", "ties", "--density", "0.3", "-o", tmp_path / "both")
    assert result.exit_code == 0, text  # the same method twice is not a conflict


def test_method_given_two_ways_that_disagree(two, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("ties", *two, "--mode", "linear", "-o", out), out,
                          "METHOD 'ties' and --mode 'linear' disagree", "pgm merge ties")


def test_unknown_method_argument_suggests_the_closest(two, tmp_path):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("tie", *two, "-o", out), out,
                          "METHOD 'tie' is not a merge method (did you mean ties?)", "Supported: linear,")


def test_bare_merge_and_help_list_every_method_on_one_line():
    from paligemma_cli.cli.merge import BRIEF
    from paligemma_cli.merge.catalog import METHOD_INFO

    assert list(BRIEF) == list(METHOD_INFO)
    bare = runner.invoke(app, ["merge"])
    assert bare.exit_code == 2 and "Usage: pgm merge METHOD" in bare.output
    helped = runner.invoke(app, ["merge", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert helped.exit_code == 0
    for text in (bare.output, helped.output):
        for name, brief in BRIEF.items():
            assert any(name in line and brief in line for line in text.splitlines()), (name, text)


class _FullDisk:
    """A file whose writes fail as on a full disk once `room` bytes are written (a real partial file)."""

    def __init__(self, path, mode, room):
        self.file, self.room = open(path, mode), room

    def write(self, data):
        data = memoryview(data).cast("B")
        self.file.write(data[: max(self.room, 0)])
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.file.close()


def test_a_disk_that_fills_mid_merge_is_one_line_and_the_earlier_merge_stays(two, tmp_path, monkeypatch):
    import paligemma_cli.merge.writer as writer

    out = tmp_path / "m"
    assert invoke(*two, "--output", out)[0].exit_code == 0
    before = folder_bytes(out)
    monkeypatch.setattr(writer, "open", lambda path, mode: _FullDisk(path, mode, 4096), raising=False)
    result, text = invoke(*two, "--output", out, "--overwrite", "--mode", "linear")
    lines = [line for line in text.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in text, text
    assert f"Writing {out} failed: No space left on device (it needs " in lines[0] and "free)" in lines[0]
    assert folder_bytes(out) == before  # nothing half-written, nothing hidden left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("flags, needle", [
    (["--density", "0.3", "--density", "0.5"], "--density was given 2 times (0.3, 0.5)"),
    (["--lambda", "1", "--lambda=0.5"], "--lambda was given 2 times (1, 0.5)"),
    (["--normalize", "--no-normalize"], "--normalize was given 2 times (--normalize, --no-normalize)"),
    (["--output-format", "adapter", "--rank", "4", "--rank", "8"], "--rank was given 2 times (4, 8)"),
])
def test_a_single_value_flag_given_twice_is_an_error_not_last_wins(two, tmp_path, flags, needle):
    out = tmp_path / "m"
    assert_one_line_error(*invoke("ties", *two, "-o", out, *flags), out, needle, "Give")


def test_repeatable_flags_still_repeat(two, tmp_path):
    result, text = invoke("ties", *two, "-o", tmp_path / "m", "--weight", "1", "--weight", "2")
    assert result.exit_code == 0, text


@pytest.mark.parametrize("flags, needle", [
    (["--mode", "tsv", "--density", "0.5"], "--density has no effect with --mode tsv"),
    (["--mode", "iso_c", "--weight", "1", "--weight", "2"], "--weight has no effect with --mode iso_c"),
    (["--mode", "iso_c", "--normalize"], "--normalize/--no-normalize has no effect with --mode iso_c"),
    (["--mode", "ties", "--gamma", "0.1"], "--gamma has no effect with --mode ties"),
    (["--mode", "ties", "--device", "cpu"], "--device has no effect with --mode ties"),
    (["--mode", "breadcrumbs", "--gamma", "1.5"], "--gamma must be in [0, 1) (got 1.5)"),
    (["--mode", "iso_cts", "--common-fraction", "0"], "--common-fraction must be in (0, 1] (got 0)"),
    (["--mode", "della", "--density", "0.95"], "--density 0.95 and --epsilon 0.1 give keep probabilities outside"),
    (["--mode", "della", "--epsilon", "nan"], "--epsilon must be a finite number"),
    (["--mode", "tsv", "--device", "tpu"], "--device must be auto, cpu or cuda"),
])
def test_new_method_flags_are_checked_up_front(two, tmp_path, flags, needle):
    out = tmp_path / "m"
    assert_one_line_error(*invoke(*two, "-o", out, *flags), out, needle)


def test_an_unnormalised_sum_of_several_task_vectors_warns_once(merge_inputs, tmp_path):
    three = ["--base-model", merge_inputs["base"]] + [x for n in ("noisy_1", "noisy_2", "noisy_3")
                                                      for x in ("--model", merge_inputs[n])]
    result, text = invoke("dare_linear", *three, "-o", tmp_path / "a")
    assert result.exit_code == 0, text
    warnings = [line for line in text.splitlines() if "Warning:" in line]
    assert len(warnings) == 1 and "adds 3 task vectors at lambda 1" in warnings[0]
    assert json.loads((tmp_path / "a" / "pgm_merge.json").read_text())["warnings"]
    for flags in (["--lambda", "0.33"], ["--normalize"]):
        result, text = invoke("dare_linear", *three, "-o", tmp_path / flags[0][2:], *flags)
        assert result.exit_code == 0 and "Warning" not in text, text
    result, text = invoke("dare_ties", *three, "-o", tmp_path / "dt")  # normalised by default now
    assert result.exit_code == 0 and "Warning" not in text and "normalized" in text, text


def test_svd_method_reports_its_device_and_recipe(two, tmp_path):
    result, text = invoke("iso_cts", *two, "-o", tmp_path / "m", "--common-fraction", "0.6", "--device", "cpu")
    assert result.exit_code == 0, text
    assert "SVDs on cpu" in text and "common fraction 0.6" in text
    recipe = json.loads((tmp_path / "m" / "pgm_merge.json").read_text())
    assert recipe["mode"] == "iso_cts" and recipe["common_fraction"] == 0.6 and recipe["device"] == "cpu"
