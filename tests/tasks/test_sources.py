"""The three sources (official layout, hub-schema dataset, JSONL) through the loaders training uses."""

import json

import pytest

from paligemma_cli.config import DataConfig
from paligemma_cli.data.images import open_image
from paligemma_cli.tasks.sources import load_examples
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks import TASKS, get_task

EXPECTED_OFFICIAL = {  # examples per split for 8 synthetic images (see each task's writer)
    "vqav2": 8 + 3, "gqa": 16, "docvqa": 16, "coco": 8,
}


@pytest.mark.parametrize("task_name", sorted(TASKS))
@pytest.mark.parametrize("role", ["train", "eval"])
def test_official_layout(task_name, role, synthetic_data):
    task = get_task(task_name)
    examples = load_examples(task, DataConfig(task=task_name, data_root=synthetic_data(task_name)), role)
    assert len(examples) == EXPECTED_OFFICIAL[task_name]
    ex = examples[0]
    assert ex.answers and all(isinstance(a, str) for a in ex.answers)
    assert ex.prefix.startswith("caption en" if task_name == "coco" else "answer en ")
    assert open_image(ex.image).size == (64, 64)
    if task_name == "vqav2":
        assert len(ex.answers) == 10 and ex.meta["answer_type"] in ("other", "number")


def test_official_max_samples_and_prompt_override(synthetic_data):
    data = DataConfig(data_root=synthetic_data("vqav2"), max_train_samples=3, prompt="question: {question}")
    examples = load_examples(get_task("vqav2"), data, "train")
    assert len(examples) == 3 and examples[0].prefix == "question: what color is the shape?"


def test_coco_karpathy_split(synthetic_data):
    examples = load_examples(get_task("coco"), DataConfig(data_root=synthetic_data("coco"),
                                                          eval_split="karpathy-val"), "eval")
    assert len(examples) == 8 and len(examples[0].answers) == 3


def test_jsonl(tmp_path, synthetic_data):
    img = synthetic_data("vqav2") / "train2014" / "COCO_train2014_000000000001.jpg"
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(img.read_bytes())
    lines = [{"image": "img/a.jpg", "prefix": "answer en what is it?", "suffix": "a square"},
             {"image": "img/a.jpg", "prefix": "caption en", "suffix": ["one", "two"], "id": "x7"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    data = DataConfig(train_file=tmp_path / "train.jsonl", eval_file=tmp_path / "train.jsonl")
    examples = load_examples(get_task("vqav2"), data, "train")
    assert [e.answers for e in examples] == [["a square"], ["one", "two"]]
    assert examples[1].id == "x7" and examples[0].prefix == "answer en what is it?"
    assert open_image(examples[0].image).mode == "RGB"


def test_jsonl_bad_line_is_named(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"image": "a.jpg", "suffix": "x"}\n{not json\n')
    with pytest.raises(PgmError, match="line 2"):
        load_examples(get_task("vqav2"), DataConfig(train_file=tmp_path / "t.jsonl"), "train")


# ----- hub-schema datasets saved locally ----------------------------------------------------------

def _hub_rows(task_name, root):
    """Rows with the column names and types of each task's documented hub dataset."""
    task = get_task(task_name)
    examples = load_examples(task, DataConfig(data_root=root), "eval")[:4]
    images = [open_image(e.image) for e in examples]
    if task_name == "vqav2":  # HuggingFaceM4/VQAv2
        return {"question_id": [e.id for e in examples], "question": [e.meta["question"] for e in examples],
                "answers": [[{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                             for i, a in enumerate(e.answers)] for e in examples],
                "answer_type": [e.meta["answer_type"] for e in examples],
                "multiple_choice_answer": [e.answers[0] for e in examples], "image": images}, examples
    if task_name == "docvqa":  # lmms-lab/DocVQA
        return {"questionId": [str(e.id) for e in examples], "question": [e.meta["question"] for e in examples],
                "answers": [e.answers for e in examples], "image": images}, examples
    if task_name == "coco":  # lmms-lab/COCO-Caption2017
        return {"question_id": [str(e.id) for e in examples], "image_id": [e.id for e in examples],
                "question": ["caption"] * 4, "answer": [e.answers for e in examples], "image": images}, examples
    return {"id": [e.id for e in examples], "question": [e.meta["question"] for e in examples],  # gqa
            "answer": [e.answers[0] for e in examples], "image": images}, examples


@pytest.mark.parametrize("task_name", sorted(TASKS))
@pytest.mark.parametrize("fmt", ["save_to_disk", "parquet"])
def test_hub_schema_dataset(task_name, fmt, tmp_path, synthetic_data):
    import datasets

    rows, reference = _hub_rows(task_name, synthetic_data(task_name))
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
    task = get_task(task_name)
    split = task.hf_splits.get(task.eval_split, task.eval_split)
    if fmt == "save_to_disk":
        datasets.DatasetDict({split: ds}).save_to_disk(str(tmp_path / "ds"))
    else:
        (tmp_path / "ds").mkdir()
        ds.to_parquet(str(tmp_path / "ds" / f"{split}-00000-of-00001.parquet"))
    examples = load_examples(task, DataConfig(hf_dataset=str(tmp_path / "ds")), "eval")
    assert [e.answers for e in examples] == [r.answers for r in reference]
    assert [e.prefix for e in examples] == [r.prefix for r in reference]
    assert [str(e.id) for e in examples] == [str(r.id) for r in reference]
    assert open_image(examples[0].image).size == (64, 64)  # decoded lazily, on access


def test_hub_dataset_missing_split_lists_available(tmp_path, synthetic_data):
    import datasets

    rows, _ = _hub_rows("gqa", synthetic_data("gqa"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(PgmError, match="Available: train"):
        load_examples(get_task("gqa"), DataConfig(hf_dataset=str(tmp_path / "ds")), "eval")


def test_missing_and_corrupt_images_are_named_and_counted(tmp_path):
    task = get_task("vqav2")
    task.write_synthetic(tmp_path, 6)
    images = sorted((tmp_path / "train2014").glob("*.jpg"))
    images[0].unlink()
    images[1].unlink()
    with pytest.raises(PgmError, match=rf"{images[0].name} is missing and 1 more \(2 of 6 images\)"):
        load_examples(task, DataConfig(data_root=tmp_path), "train")
    images[2].write_bytes(b"not a jpeg")
    task.write_synthetic(tmp_path, 6)  # restores the missing ones (and the corrupt one)
    images[3].write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PgmError, match=rf"{images[3].name} is unreadable \(1 of 6"):
        load_examples(task, DataConfig(data_root=tmp_path), "train")


def test_missing_official_file_names_it(tmp_path):
    with pytest.raises(PgmError, match="v2_OpenEnded_mscoco_train2014_questions.json"):
        load_examples(get_task("vqav2"), DataConfig(data_root=tmp_path), "train")
