"""DocVQA (single-page): questions on document images, scored by ANLS."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Optional, Sequence, Union

import msgspec

from paligemma_cli.data.synthetic import make_scenes, render_document, save_image
from paligemma_cli.tasks.base import Example, Score, Task, first_present, write_json
from paligemma_cli.tasks.records import Record, RecordKind, decode_json


_Labels = Optional[Union[list[str], str]]


class _Item(msgspec.Struct, gc=False):
    questionId: int
    question: str
    image: str  # relative to the annotation file: documents/<name>.png
    answers: list[str] = []
    docId: Any = None
    # The breakdowns, where the annotation file has them: DocVQA's question_types, and
    # InfographicVQA's answer_type, evidence and operation/reasoning (each a list of names).
    question_types: _Labels = None
    answer_type: _Labels = None
    evidence: _Labels = None
    operation: _Labels = msgspec.field(default=None, name="operation/reasoning")


# Annotation field -> metric name (per_<name>), in the order the RRC script prints its breakdowns.
_CATEGORIES = {"question_types": "question_type", "answer_type": "answer_type", "evidence": "evidence_type",
               "operation/reasoning": "operation_type"}


def _labels(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _categories(examples: Sequence[Example]) -> dict[str, dict[Hashable, tuple[str, ...]]]:
    """{metric name: {question id: labels}} for the breakdowns some question has labels for."""
    found: dict[str, dict] = {}
    for ex in examples:
        meta = ex.meta
        for field, name in _CATEGORIES.items():
            labels = _labels(meta.get(field))
            if labels is not None:
                found.setdefault(name, {})[ex.id] = labels
    return {name: found[name] for name in _CATEGORIES.values() if name in found}


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
    headline_scale = 100.0  # papers report anls x 100
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
        meta_names = ("question", None, ("docId", *_CATEGORIES))
        kind = RecordKind(path.parent, "{}", template or self.prompt_template, meta_names)
        return [Record(item.questionId, item.question, item.answers, item.image, (item.docId, *map(_labels, (
            item.question_types, item.answer_type, item.evidence, item.operation))), kind) for item in items]

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        question = first_present(row, ["question"], self.hf_id)
        answers = first_present(row, ["answers", "answer"], self.hf_id)
        answers = [answers] if isinstance(answers, str) else list(answers)
        meta = {"question": question, **{field: row[field] for field in _CATEGORIES if row.get(field) is not None}}
        return Example(id=int(row.get("questionId", index)), image=None, prefix=self.prefix(question, template),
                       answers=answers, meta=meta)

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.anls import anls

        variant = extra.get("anls_variant") or "rrc"
        categories = _categories(examples)
        result = anls(predictions, {ex.id: ex.answers for ex in examples}, variant=variant, categories=categories)
        # The paper's definition never goes by the server's name.
        metrics = {"anls" if variant == "rrc" else f"anls_{variant}": result["anls"]}
        metrics.update((f"per_{name}", result[f"per_{name}"]) for name in categories)
        return Score(metrics, dict(result["per_question"]))

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
