"""The answer-only loss equals the model's full-logits loss, with logits for far fewer positions."""

import pytest
import torch

from paligemma_cli.config import DataConfig
from paligemma_cli.tasks.sources import load_examples
from paligemma_cli.model.batches import TrainCollator, TrainingSet
from paligemma_cli.model.loss import answer_loss, answer_positions
from paligemma_cli.tasks import get_task


def test_answer_positions_hand_worked():
    labels = torch.tensor([[-100, -100, -100, 5, 6, 1],
                           [-100, -100, -100, -100, 7, 1]])
    # Row 0's first label is at index 3, predicted from position 2: keep positions 2..5 = 4.
    assert answer_positions(labels) == 4
    assert answer_positions(torch.full((2, 5), -100)) == 1


@pytest.mark.parametrize("task_name", ["coco", "vqav2"])
def test_answer_loss_equals_model_loss(task_name, tiny_model_dir, synthetic_data):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    task = get_task(task_name)
    examples = load_examples(task, DataConfig(data_root=synthetic_data(task_name)), "train")
    items = [TrainingSet(task, examples, seed=0)[i] for i in range(4)]
    batch = TrainCollator(processor, task.max_length)(items)
    with torch.no_grad():
        full = model(**batch).loss
        ours = answer_loss(model, batch)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    assert answer_positions(batch["labels"]) < batch["input_ids"].shape[1] // 2


def test_answer_loss_gradients_match(tiny_model_dir, synthetic_data):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    task = get_task("gqa")
    examples = load_examples(task, DataConfig(data_root=synthetic_data("gqa")), "train")
    batch = TrainCollator(processor, 64)([TrainingSet(task, examples, 0)[i] for i in range(3)])
    grads = []
    for fn in (lambda m: m(**batch).loss, lambda m: answer_loss(m, batch)):
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
        fn(model).backward()
        grads.append(model.model.language_model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
