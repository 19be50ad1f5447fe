"""pgm train end to end on the tiny model: per-task 4-bit LoRA steps, a portable adapter, learning."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from paligemma_cli.config import ModelConfig, build_run
from paligemma_cli.train.loop import train
from paligemma_cli.tasks import TASKS

pytestmark = pytest.mark.slow


def _run(task, data_root, out, **over):
    values = dict(task=task, model_path="tiny", data_root=str(data_root), output_dir=str(out), batch_size=2,
                  gradient_accumulation_steps=2, max_steps=3, save_steps=2, logging_steps=1,
                  learning_rate=1e-3)
    values.update(over)
    return build_run(values)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_a_few_4bit_lora_steps_per_task(task_name, tmp_path, synthetic_data, tiny_model_dir):
    out = tmp_path / "run"
    result = train(_run(task_name, synthetic_data(task_name), out))
    assert result.global_step == 3 and result.final_loss is not None and result.final_loss > 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "run_config.json", "loss.png",
                 "processor_config.json", "tokenizer.json", "train_log.jsonl"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32
    assert json.loads((out / "run_config.json").read_text())["pgm_run"]["task"] == task_name


PORTABLE = textwrap.dedent("""
    import sys, torch
    from PIL import Image
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor
    base, adapter, image, out = sys.argv[1:5]
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    proc = AutoProcessor.from_pretrained(adapter)
    batch = proc(text=["<image>answer en what color is the shape?"], images=[Image.open(image).convert("RGB")],
                 return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, out)
    assert not any(m.startswith("paligemma_cli") for m in sys.modules), "pgm was imported"
""")


def test_adapter_loads_with_plain_peft_and_reproduces_pgm_logits(tmp_path, synthetic_data, tiny_model_dir):
    from PIL import Image

    from paligemma_cli.model.batches import generation_batch
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import Example

    root = synthetic_data("vqav2")
    out = tmp_path / "run"
    train(_run("vqav2", root, out, max_steps=4, learning_rate=1e-2))
    image = root / "val2014" / "COCO_val2014_000000001001.jpg"
    script = tmp_path / "portable.py"
    script.write_text(PORTABLE)
    subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(out), str(image),
                    str(tmp_path / "logits.pt")], check=True, capture_output=True, cwd=tmp_path)
    theirs = torch.load(tmp_path / "logits.pt")

    model = load_for_inference(ModelConfig(model_path="tiny", quantization="none", compute_dtype="fp32"), out)
    example = Example(id=1, image=image, prefix="answer en what color is the shape?", answers=[])
    batch = generation_batch(load_processor("tiny"), [example])
    with torch.no_grad():
        ours = model(**batch).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    base = load_for_inference(ModelConfig(model_path="tiny", quantization="none", compute_dtype="fp32"))
    with torch.no_grad():  # the adapter is not a no-op
        assert not torch.allclose(base(**batch).logits, ours, atol=1e-3)


def test_training_learns_a_task_the_untrained_model_cannot_answer(tmp_path, tiny_model_dir):
    """Colour questions on held-out images: near chance untrained, >= 0.8 exact match after QLoRA."""
    from paligemma_cli.config import DataConfig
    from paligemma_cli.tasks.sources import load_examples
    from paligemma_cli.infer.generate import generate_answers
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import get_task

    task = get_task("vqav2")
    task.write_synthetic(tmp_path / "data", 200, seed=0)
    held_out = [e for e in load_examples(task, DataConfig(data_root=tmp_path / "data"), "eval")
                if e.meta["answer_type"] == "other"][:60]
    processor = load_processor("tiny")

    def exact_match(adapter=None):
        model = load_for_inference(ModelConfig(model_path="tiny"), adapter)
        answers = list(generate_answers(model, processor, held_out, max_new_tokens=4, batch_size=16))
        truth = [e.answers[0] for e in held_out]
        return sum(a == t for a, t in zip(answers, truth)) / len(truth)

    before = exact_match()
    train(_run("vqav2", tmp_path / "data", tmp_path / "run", batch_size=32, gradient_accumulation_steps=1,
               max_steps=160, learning_rate=6e-3, save_steps=1000, logging_steps=50))
    after = exact_match(tmp_path / "run")
    print(f"exact match on held-out colour questions: before {before:.2f}, after {after:.2f}")
    assert before <= 0.3
    assert after >= 0.8


def test_paligemma2_trains_and_generates(tmp_path, synthetic_data, tiny_pg2_dir):
    """The Gemma-2 text model (PaliGemma 2) goes through the same 4-bit LoRA path."""
    from paligemma_cli.infer.evaluate import evaluate_model
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import get_task

    out = tmp_path / "run"
    result = train(_run("vqav2", synthetic_data("vqav2"), out, model_path="tiny-pg2", max_steps=2))
    assert result.global_step == 2
    model = load_for_inference(ModelConfig(model_path="tiny-pg2"), out)
    assert model.base_model.model.config.text_config.model_type == "gemma2"
    from paligemma_cli.config import DataConfig
    from paligemma_cli.tasks.sources import load_examples

    task = get_task("vqav2")
    examples = load_examples(task, DataConfig(data_root=synthetic_data("vqav2")), "eval")[:4]
    scored = evaluate_model(task, model, load_processor("tiny-pg2"), examples, max_new_tokens=4, batch_size=4)
    assert len(scored.rows) == 4 and 0 <= scored.metrics["accuracy"] <= 100
