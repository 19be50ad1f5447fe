"""Collated training batches supervise exactly the answer + <eos>: nothing of the prompt or image."""

import pytest

from paligemma_cli.config import DataConfig
from paligemma_cli.tasks.sources import load_examples
from paligemma_cli.model.batches import TrainCollator, TrainingSet, generation_batch, truncated_rows
from paligemma_cli.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_labels_are_exactly_the_target_and_eos(task_name, processor, synthetic_data):
    task = get_task(task_name)
    examples = load_examples(task, DataConfig(task=task_name, data_root=synthetic_data(task_name)), "train")
    dataset = TrainingSet(task, examples, seed=3)
    items = [dataset[i] for i in range(4)]
    batch = TrainCollator(processor, task.max_length)(items)
    tok = processor.tokenizer
    for row, item in enumerate(items):
        labels = batch["labels"][row]
        supervised = labels[labels != -100].tolist()
        # The supervised tokens are the suffix's tokens followed by <eos>, and nothing else.
        expected = tok(item["suffix"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert supervised == expected
        assert tok.decode(supervised) == item["suffix"] + tok.eos_token
        # ...and they sit at the end of the input, where the suffix is.
        ids = batch["input_ids"][row].tolist()
        assert ids[-len(expected):] == expected
        image_id = tok.convert_tokens_to_ids("<image>")
        assert image_id not in supervised and tok.bos_token_id not in supervised
        # Prefix positions are marked 0 in token_type_ids (prefix-LM attention), suffix 1.
        assert batch["token_type_ids"][row][-len(expected):].eq(1).all()
        assert item["suffix"] in examples[row].answers


def test_vqav2_target_is_one_of_ten_answers_reproducibly(synthetic_data):
    task = get_task("vqav2")
    examples = load_examples(task, DataConfig(data_root=synthetic_data("vqav2")), "train")
    a = [TrainingSet(task, examples, seed=1)[i]["suffix"] for i in range(len(examples))]
    b = [TrainingSet(task, examples, seed=1)[i]["suffix"] for i in range(len(examples))]
    assert a == b
    assert all(s in ex.answers for s, ex in zip(a, examples))
    # Across seeds the draw changes for some question whose annotators disagree.
    draws = {TrainingSet(task, examples, seed=s)[0]["suffix"] for s in range(40)}
    assert len(draws) > 1


def test_truncation_is_counted(processor, synthetic_data):
    task = get_task("coco")
    examples = load_examples(task, DataConfig(data_root=synthetic_data("coco")), "train")
    items = [TrainingSet(task, examples, seed=0)[i] for i in range(3)]
    collator = TrainCollator(processor, max_length=12)  # shorter than every caption
    batch = collator(items)
    assert truncated_rows(batch, processor.tokenizer.eos_token_id) == 3
    assert batch["input_ids"].shape[1] == collator.max_tokens
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for row in range(3):
        # The image and prompt survive whole; only the answer's tail is cut.
        assert int((batch["input_ids"][row] == image_id).sum()) == 16
        kept = batch["labels"][row][batch["labels"][row] != -100].tolist()
        full = processor.tokenizer(items[row]["suffix"], add_special_tokens=False)["input_ids"]
        assert 0 < len(kept) < len(full) and kept == full[:len(kept)]


def test_generation_batch_has_no_labels_and_left_padding(processor, synthetic_data):
    task = get_task("gqa")
    examples = load_examples(task, DataConfig(data_root=synthetic_data("gqa")), "eval")
    batch = generation_batch(processor, [examples[0], examples[1]])
    assert "labels" not in batch
    # The two prompts differ in length; the shorter one is padded on the left.
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]
    short = lengths.index(min(lengths))
    assert batch["attention_mask"][short][0] == 0 and batch["attention_mask"][short][-1] == 1
