"""DocVQA (single-page): questions on document images, scored by ANLS."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Hashable, Sequence

import msgspec

from paligemma_cli.data.synthetic import make_scenes, render_document, save_image
from paligemma_cli.tasks.base import Example, Score, Task, first_present, write_json
from paligemma_cli.tasks.records import Record, RecordKind, decode_json


class _Item(msgspec.Struct, gc=False):
    questionId: int
    question: str
    image: str  # relative to the annotation file: documents/<name>.png
    answers: list[str] = []
    docId: Any = None


class _Annotations(msgspec.Struct):
    data: list[_Item]


class DocVQA(Task):
    name = "docvqa"
    title = "DocVQA (single-page document VQA)"
    prompt_template = "answer en {question}"
    max_length = 256
    max_new_tokens = 32
    group_by_length = True  # answers of 1 to 40+ tokens
    train_split = "train"
    eval_split = "val"
    headline = "anls"
    id_key, answer_key = "questionId", "answer"
    hf_id = "lmms-lab/DocVQA"
    hf_splits = {"val": "validation", "test": "test"}

    def annotation_file(self, root: Path, split: str) -> Path:
        """`<split>_v1.0.json` at the root, or inside `<split>/` as the official archives extract."""
        flat = root / f"{split}_v1.0.json"
        nested = root / split / f"{split}_v1.0.json"
        return nested if nested.exists() and not flat.exists() else flat

    def layout(self, split: str) -> str:
        return f"{split}_v1.0.json (or {split}/{split}_v1.0.json) with its \"image\" paths (documents/...) beside it"

    def training_target(self, example: Example, rng) -> str:
        return rng.choice(example.answers)

    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Record]:
        path = self.annotation_file(root, split)
        items = decode_json(path, "the DocVQA annotation file", _Annotations).data
        kind = RecordKind(path.parent, "{}", partial(self.prefix, template=template), ("question", None, "docId"))
        return [Record(item.questionId, item.question, item.answers, item.image, item.docId, kind) for item in items]

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        question = first_present(row, ["question"], self.hf_id)
        answers = first_present(row, ["answers", "answer"], self.hf_id)
        answers = [answers] if isinstance(answers, str) else list(answers)
        return Example(id=int(row.get("questionId", index)), image=None, prefix=self.prefix(question, template),
                       answers=answers, meta={"question": question})

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.anls import anls

        result = anls(predictions, {ex.id: ex.answers for ex in examples})
        return Score({"anls": result["anls"]}, dict(result["per_question"]))

    def write_synthetic(self, root: Path, num_examples: int, seed: int = 0,
                        splits: tuple[str, ...] | None = None) -> list[Path]:
        written = []
        for k, split in enumerate(splits or (self.train_split, self.eval_split)):
            data = []
            for scene in make_scenes(num_examples, seed=seed + 1000 * k):
                doc = f"doc{1000 * k + scene.index:05d}"
                rel = f"documents/{doc}.png"
                save_image(render_document(scene), root / split / rel)
                for j, (question, answers) in enumerate([
                        ("what is the total?", [str(scene.number), f"{scene.number}.00"]),
                        ("what color is the header?", [scene.color])]):
                    data.append({"questionId": (1000 * k + scene.index) * 10 + j, "question": question,
                                 "question_types": ["layout"], "image": rel, "docId": 1000 * k + scene.index,
                                 "ucsf_document_id": doc, "ucsf_document_page_no": "1",
                                 "answers": answers, "data_split": split})
            written.append(write_json(root / split / f"{split}_v1.0.json", {
                "dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0", "data": data}))
        return written
