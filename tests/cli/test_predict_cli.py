"""`pgm predict` through the real CLI on the tiny model: eval's answers, JSON/table/file, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from paligemma_cli.cli import app
from paligemma_cli.tasks import get_task
from tests.infer.test_evaluate import one_thread  # noqa: F401  (a fixture)

runner = CliRunner()


def pgm(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA on the tiny model with non-zero B, so the adapter changes what is generated."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from paligemma_cli.model.load import lora_target_regex

    torch.manual_seed(3)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_regex(("language",)),
                                                  init_lora_weights=False))
    path = tmp_path_factory.mktemp("predict") / "adapter"
    peft_model.save_pretrained(path)
    return path


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_predict_gives_the_answers_eval_gives(synthetic_data, adapter, tmp_path, one_thread):
    root = synthetic_data("vqav2", 4)
    out = tmp_path / "eval"
    result = pgm("eval", "--task", "vqav2", "--model-path", "tiny", "--adapter", adapter, "--data-root", root,
                 "-o", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    examples = {ex.id: ex for ex in get_task("vqav2").load_official(root, "val2014")}
    image_of = {r["question_id"]: str(examples[r["question_id"]].image) for r in rows}
    first = rows[0]  # and a question with another image and another prompt
    evaluated = [first, next(r for r in rows if image_of[r["question_id"]] != image_of[first["question_id"]]
                             and r["prompt"] != first["prompt"])]
    lines = [{"image": image_of[r["question_id"]], "prefix": r["prompt"], "question_id": r["question_id"]}
             for r in evaluated]
    assert len(lines) == 2 and lines[0]["image"] != lines[1]["image"] and lines[0]["prefix"] != lines[1]["prefix"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = pgm("predict", "--model-path", "tiny", "--adapter", adapter, "--task", "vqav2",
                 "--input", tmp_path / "in.jsonl", "--output", tmp_path / "answers.jsonl", "--json")
    assert result.exit_code == 0, result.output
    printed = json_lines(result.output)
    written = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert printed == written
    assert [w["answer"] for w in written] == [r["answer"] for r in evaluated]
    assert any(w["answer"] for w in written)
    assert [w["question_id"] for w in written] == [r["question_id"] for r in evaluated]  # passed through
    # The same images given as IMAGE arguments with one prompt, in one batch and one at a time.
    images = [line["image"] for line in lines]
    one_prompt = [json_lines(pgm("predict", "--model-path", "tiny", "--adapter", adapter, *images, "--task", "vqav2",
                                 "--prompt", lines[0]["prefix"], "--json", "--batch-size", bs).output)
                  for bs in (2, 1)]
    assert one_prompt[0] == one_prompt[1]
    assert one_prompt[0][0]["answer"] == written[0]["answer"]


def test_detection_prompt_table_boxes_and_strip_special(synthetic_data, tmp_path, one_thread):
    from PIL import Image

    from paligemma_cli.infer.predict import decode_boxes, strip_special

    image = sorted((synthetic_data("vqav2", 4) / "val2014").iterdir())[0]
    big = tmp_path / "big.png"
    Image.open(image).resize((640, 480)).save(big)
    kept = json_lines(pgm("predict", "--model-path", "tiny", big, "--prompt", "detect circle", "--json").output)[0]
    assert kept["prefix"] == "detect circle" and "boxes" in kept
    assert kept["boxes"] == [vars(b) for b in decode_boxes(kept["answer"], 640, 480)]
    stripped = json_lines(pgm("predict", "--model-path", "tiny", big, "--prompt", "detect circle", "--json",
                              "--strip-special").output)[0]
    assert stripped["answer"] == strip_special(kept["answer"]) and "<loc" not in stripped["answer"]
    result = pgm("predict", "--model-path", "tiny", big, image, "--prompt", "detect circle")
    assert result.exit_code == 0, result.output
    assert "big.png" in result.output and "boxes, px" in result.output and "detect circle" in result.output


def one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_adapter_for_another_base_is_one_line(adapter, synthetic_data, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    weights = {k: torch.zeros(v.shape[0], 96) if "lora_A" in k else v
               for k, v in load_file(other / "adapter_model.safetensors").items()}
    save_file(weights, other / "adapter_model.safetensors")
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "google/paligemma2-3b-pt-224"
    (other / "adapter_config.json").write_text(json.dumps(config))
    image = sorted((synthetic_data("vqav2", 4) / "val2014").iterdir())[0]
    one_error_line(pgm("predict", "--model-path", "tiny", "--adapter", other, image),
                   f"--adapter {other} does not fit --model-path tiny (it was trained on google/paligemma2-3b-pt-224)",
                   "q_proj.lora_A is [4, 96], the model's [4, 64]", "Pass --model-path google/paligemma2-3b-pt-224")


def test_output_replaces_only_a_file_pgm_wrote(synthetic_data, tmp_path):
    image = sorted((synthetic_data("vqav2", 4) / "val2014").iterdir())[0]
    out = tmp_path / "answers.jsonl"
    out.write_text("mine\n")
    one_error_line(pgm("predict", "--model-path", "tiny", image, "-o", out),
                   "--output", "already exists", "--overwrite")
    one_error_line(pgm("predict", "--model-path", "tiny", image, "-o", out, "--overwrite"),
                   "--output", "answers.jsonl was not written by pgm", "never overwrites")
    assert out.read_text() == "mine\n"

    out.unlink()
    result = pgm("predict", "--model-path", "tiny", image, "-o", out)
    assert result.exit_code == 0, result.output
    assert json_lines(out.read_text())[0]["image"] == str(image)
    assert f"Wrote 1 answer to {out}" in " ".join(result.output.split())
    first = out.read_text()
    result = pgm("predict", "--model-path", "tiny", image, "-o", out, "--overwrite", "--strip-special")
    assert result.exit_code == 0, result.output  # pgm wrote it: --overwrite replaces it
    assert not [p.name for p in tmp_path.iterdir() if p.name != "answers.jsonl"]  # no lock or temp left
    kept = out.read_bytes()
    from tests.cli.test_eval_cli import _disk_full_half_way

    with pytest.MonkeyPatch.context() as patch:
        _disk_full_half_way(patch)
        one_error_line(pgm("predict", "--model-path", "tiny", image, "-o", out, "--overwrite"),
                       f"Writing {out} failed: No space left on device (it needs ")
    assert out.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]
    out.write_text(first + "my note\n")  # changed since pgm wrote it: the user's now
    one_error_line(pgm("predict", "--model-path", "tiny", image, "-o", out, "--overwrite"),
                   "was not written by pgm (or was changed since)")
    assert out.read_text().endswith("my note\n")
