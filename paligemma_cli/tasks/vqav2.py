"""VQAv2: open-ended VQA on COCO images, scored by the official 10-annotator accuracy."""

from __future__ import annotations

import random
from pathlib import Path
from sys import intern
from typing import Any, Hashable, Optional, Sequence

import msgspec

from paligemma_cli.data.synthetic import NUMBER_WORDS, make_scenes, render_scene, save_image
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks.base import Example, Score, Task, first_present, write_json
from paligemma_cli.tasks.records import Record, RecordKind, decode_json


# Only the fields pgm uses; msgspec skips the rest of each entry without building Python objects.
class _Question(msgspec.Struct, gc=False):
    question_id: int
    image_id: int
    question: str


class _Questions(msgspec.Struct):
    questions: list[_Question]


class _Answer(msgspec.Struct, gc=False):
    answer: str


class _Annotation(msgspec.Struct, gc=False):
    question_id: int
    answers: list[_Answer]
    answer_type: str = "other"
    question_type: Optional[str] = None  # "what color is the", ...: vqaEval.py's perQuestionType


class _Annotations(msgspec.Struct):
    annotations: list[_Annotation]


def _image_split(split: str) -> str:
    # test-dev questions use the test2015 images.
    return "test2015" if split.startswith("test") else split


def _image_dirs(root: Path, split: str) -> list[Path]:
    img = _image_split(split)
    return [root / img, root / "images" / img, root / "Images" / "mscoco" / img, root / "coco" / img]


def _types(example: Example | Record) -> tuple[str, str | None]:
    """(answer type, question type), "other" when the answer type is not given. A Record keeps
    them in `info`: building its meta dict per question would cost a dict each."""
    if isinstance(example, Record):
        return example.info or ("other", None)
    return example.meta.get("answer_type") or "other", example.meta.get("question_type")


class VQAv2(Task):
    name = "vqav2"
    title = "VQAv2 (open-ended VQA on COCO)"
    prompt_template = "answer en {question}"
    max_length = 64
    max_new_tokens = 16
    train_split = "train2014"
    eval_split = "val2014"
    id_key, answer_key = "question_id", "answer"
    hf_id = "HuggingFaceM4/VQAv2"
    hf_splits = {"train2014": "train", "val2014": "validation", "test-dev2015": "testdev",
                 "test2015": "test"}

    def questions_file(self, root: Path, split: str) -> Path:
        return root / f"v2_OpenEnded_mscoco_{split}_questions.json"

    def annotations_file(self, root: Path, split: str) -> Path:
        return root / f"v2_mscoco_{split}_annotations.json"

    def layout(self, split: str) -> str:
        img = _image_split(split)
        return (f"v2_OpenEnded_mscoco_{split}_questions.json, v2_mscoco_{split}_annotations.json "
                f"(not for test splits) and {img}/COCO_{img}_<image_id:012d>.jpg")

    def training_target(self, example: Example, rng: random.Random) -> str:
        # As big_vision's VQAv2 transfer does: one of the ten human answers, drawn at random.
        return rng.choice(example.answers)

    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Record]:
        qfile, afile = self.questions_file(root, split), self.annotations_file(root, split)
        questions = decode_json(qfile, "the VQAv2 questions file", _Questions).questions
        answers: dict[int, _Annotation] = {}
        if afile.exists() or not split.startswith("test"):
            answers = {a.question_id: a for a in decode_json(afile, "the VQAv2 annotations file", _Annotations).annotations}
        img = _image_split(split)
        image_dir = next((d for d in _image_dirs(root, split) if d.is_dir()), _image_dirs(root, split)[0])
        kind = RecordKind(image_dir, f"COCO_{img}_{{:012d}}.jpg", template or self.prompt_template,
                          ("question", "image_id", ("answer_type", "question_type")))
        records = []
        types: dict[tuple, tuple] = {}  # ~200 distinct (answer type, question type) pairs: one tuple each
        for q in questions:
            ann = answers.get(q.question_id)
            if answers and ann is None:
                raise PgmError(f"Question {q.question_id} has no annotation in {afile}.",
                               "The questions and annotations files must be of the same split.")
            info = None
            if ann is not None:
                pair = (ann.answer_type, ann.question_type)
                info = types.get(pair)
                if info is None:
                    info = types[pair] = pair
            # Answer strings repeat massively ("yes", "2"): one shared str each keeps 443k questions small.
            records.append(Record(q.question_id, q.question, [intern(a.answer) for a in ann.answers] if ann else [],
                                  q.image_id, info, kind))
        return records

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        question = first_present(row, ["question"], self.hf_id)
        raw = first_present(row, ["answers", "multiple_choice_answer", "answer"], self.hf_id)
        if isinstance(raw, str):
            answers = [raw]
        else:
            answers = [a["answer"] if isinstance(a, dict) else str(a) for a in raw]
        return Example(id=row.get("question_id", index), image=None, prefix=self.prefix(question, template),
                       answers=answers, meta={"question": question, "answer_type": row.get("answer_type", "other"),
                                              "question_type": row.get("question_type")})

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.vqa import vqa_accuracy_of

        questions = ((ex.id, ex.answers, *_types(ex)) for ex in examples)
        result = vqa_accuracy_of(predictions, questions, always_normalize=bool(extra.get("always_normalize")))
        metrics = {k: result[k] for k in ("accuracy", "per_answer_type", "per_question_type")}
        unavailable = {}
        if not metrics["per_question_type"]:
            metrics["per_question_type"] = None
            unavailable["per_question_type"] = "the annotations give no question_type (the official VQAv2 files do)."
        per = {k: v / 100.0 for k, v in result["per_question"].items()}
        return Score(metrics, per, unavailable=unavailable)

    def write_synthetic(self, root: Path, num_examples: int, seed: int = 0,
                        splits: tuple[str, ...] | None = None) -> list[Path]:
        written = []
        for k, split in enumerate(splits or (self.train_split, self.eval_split)):
            scenes = make_scenes(num_examples, seed=seed + 1000 * k)
            questions, annotations = [], []
            for scene in scenes:
                image_id = 1000 * k + scene.index + 1
                save_image(render_scene(scene), root / split / f"COCO_{split}_{image_id:012d}.jpg")
                # Every image gets a colour question; every third also a count question.
                items = [("what color is the shape?", scene.color, "other")]
                if scene.index % 3 == 0:
                    items.append(("how many shapes are there?", str(scene.count), "number"))
                for j, (question, answer, atype) in enumerate(items):
                    qid = image_id * 10 + j
                    # Ten annotators who mostly agree, with the variants real annotators write
                    # ("Red.", "two"), so the official normalisation matters.
                    variants = [answer] * 8 + [answer.capitalize() + ".",
                                               NUMBER_WORDS[int(answer)] if answer.isdigit() else answer]
                    questions.append({"image_id": image_id, "question": question, "question_id": qid})
                    annotations.append({
                        "question_id": qid, "image_id": image_id, "question_type": question.split()[0],
                        "answer_type": atype, "multiple_choice_answer": answer,
                        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                    for i, a in enumerate(variants)]})
            info = {"description": "pgm synthetic VQAv2-format data", "version": "2.0"}
            written.append(write_json(self.questions_file(root, split), {
                "info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                "data_subtype": split, "questions": questions}))
            written.append(write_json(self.annotations_file(root, split), {
                "info": info, "license": {}, "data_subtype": split, "annotations": annotations}))
        return written
