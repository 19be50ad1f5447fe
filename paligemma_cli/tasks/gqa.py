"""GQA: compositional questions on Visual Genome images, scored by the official eval.py metrics."""

from __future__ import annotations

from pathlib import Path
from sys import intern
from typing import Any, Hashable, Optional, Sequence, TypedDict

import msgspec

from paligemma_cli.data.synthetic import make_scenes, render_scene, save_image
from paligemma_cli.tasks.base import Example, Score, Task, first_present, write_json
from paligemma_cli.tasks.records import LazyObjects, Record, RecordKind, decode_json


# Only the fields pgm uses; msgspec skips the rest of each question (programs, annotations, ...).
class _Question(msgspec.Struct, gc=False):
    imageId: str
    question: str
    answer: Optional[str] = None


class _Answer(msgspec.Struct, gc=False):
    """What consistency reads of the 2.0 M questions of val_all_questions.json."""
    answer: Optional[str] = None
    isBalanced: bool = True


def _full(question: dict | _Answer | None) -> dict:
    """A question as gqa_metrics reads it (a dict), from either file's decoded entry."""
    if question is None:
        return {}
    if isinstance(question, _Answer):
        return {"answer": question.answer, "isBalanced": question.isBalanced}
    return question


class _Types(TypedDict, total=False):
    structural: str
    semantic: str
    detailed: str


_Groups = TypedDict("_Groups", {"global": Optional[str]}, total=False)  # "global" is a keyword


class _Step(TypedDict):
    operation: str
    argument: str  # (each step's "dependencies" are skipped)


class _Scored(TypedDict, total=False):
    """What gqa_metrics reads of a question (a dict, as in the official file)."""
    answer: str
    isBalanced: bool
    entailed: list[str]
    types: _Types
    groups: _Groups
    question: str  # its words number
    semantic: list[_Step]  # its reasoning steps number


class _Choices(TypedDict):
    valid: list[str]
    plausible: list[str]


def _unstructured(example: Example) -> dict[str, Any]:
    """A question from a hub / JSONL source, as gqa_metrics reads it: open, balanced, entailing nothing."""
    question = {"answer": example.answers[0], "types": {"structural": "query"}, "entailed": [], "isBalanced": True}
    if example.meta.get("question"):  # hub rows have the text (its words number); JSONL lines only a prompt
        question["question"] = example.meta["question"]
    return question


def _unavailable(metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, str]:
    """The metrics the given files cannot give (set to None in `metrics`), each with what it needs."""
    unavailable = {}
    if "questions" not in extra:  # hub / JSONL source: no structural types, entailments or programs
        for name in ("binary", "consistency", "per_steps_number"):
            metrics[name] = None
            unavailable[name] = "needs the official <split>_balanced_questions.json (--data-root)."
    if "choices" not in extra:
        unavailable["validity"] = unavailable["plausibility"] = "needs the choices file <split>_choices.json."
    if metrics["distribution"] is None:
        unavailable["distribution"] = "no scored question has an answer group (groups.global)."
    return unavailable


class GQA(Task):
    name = "gqa"
    title = "GQA (balanced questions)"
    prompt_template = "answer en {question}"
    max_length = 64
    max_new_tokens = 16
    train_split = "train"
    eval_split = "testdev"
    id_key, answer_key = "questionId", "prediction"
    id_type = str
    hf_id = ""  # no hub table ships GQA questions and images together; see README for the schema

    def balanced_file(self, root: Path, split: str) -> Path:
        return root / f"{split}_balanced_questions.json"

    def layout(self, split: str) -> str:
        return (f"{split}_balanced_questions.json (+ optional {split}_all_questions.json for consistency, "
                f"{split}_choices.json for validity/plausibility) and images/<imageId>.jpg")

    def training_target(self, example: Example, rng) -> str:
        return example.answers[0]

    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Record]:
        questions = decode_json(self.balanced_file(root, split), "the GQA balanced questions file",
                                dict[str, _Question])
        kind = RecordKind(root / "images", "{}.jpg", template or self.prompt_template, ("question", "image_id"))
        # Image ids repeat (~6 questions per image): one shared str each.
        return [Record(qid, q.question, [intern(q.answer)] if q.answer is not None else [], intern(q.imageId),
                       None, kind) for qid, q in questions.items()]

    def load_score_extra(self, root: Path | None, split: str) -> dict[str, Any]:
        """The question set scored (all questions when present: consistency needs them) and choices.

        val_all_questions.json has 2.0 M questions (~1.5 GB), of which scoring reads the balanced
        ones (from the balanced file, with what gqa_metrics reads of them) and the answers of those
        they entail: from the all-questions file only `answer` and `isBalanced` are decoded. The
        choices stay raw JSON per entry until scoring asks for one.
        """
        if root is None:
            return {}
        balanced = decode_json(self.balanced_file(root, split), "the GQA balanced questions file",
                               dict[str, _Scored])
        all_q = root / f"{split}_all_questions.json"
        questions: dict[str, Any] = balanced
        if all_q.exists():
            questions = decode_json(all_q, "the GQA all-questions file", dict[str, _Answer])
            questions.update(balanced)  # in place: the all-questions file's order stays
        extra: dict[str, Any] = {"questions": questions}
        choices = root / f"{split}_choices.json"
        if choices.exists():
            extra["choices"] = LazyObjects(choices, "the GQA choices file", _Choices)
        return extra

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        question = first_present(row, ["question"], "GQA hub dataset")
        answer = first_present(row, ["answer", "label"], "GQA hub dataset")
        qid = row.get("questionId", row.get("question_id", row.get("id", index)))
        return Example(id=str(qid), image=None, prefix=self.prefix(question, template), answers=[str(answer)],
                       meta={"question": question})

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.gqa import gqa_metrics

        questions = extra.get("questions")
        notes = []
        if questions is None:  # hub / JSONL source: balanced questions with no structure known
            questions = {ex.id: _unstructured(ex) for ex in examples}
            notes.append("Without the official questions file every question is scored as open.")
        else:
            wanted = {ex.id for ex in examples}
            # The evaluated balanced questions plus the unbalanced ones they entail, in file order
            # as the official loop walks them.
            entailed = {str(e) for qid in wanted for e in _full(questions.get(qid)).get("entailed", ())}
            kept = {}
            for qid in filter((wanted | entailed).__contains__, questions):  # C-speed walk of 2.0 M ids
                q = _full(questions[qid])
                if qid in wanted or not q.get("isBalanced", True):
                    kept[qid] = q
            questions = kept
            unpredicted = sum(1 for qid in questions if qid not in wanted and qid not in predictions)
            if unpredicted:
                notes.append(f"{unpredicted} questions entailed by the evaluated ones have no prediction and "
                             "count as wrong in consistency (the official score needs predictions for "
                             "all of <split>_all_questions.json).")
        choices = extra.get("choices")
        if isinstance(choices, LazyObjects):  # decode the balanced questions' entries only (gqa_metrics names a missing one)
            choices = choices.decode_some(qid for qid, q in questions.items() if q.get("isBalanced", True))
        result = gqa_metrics(predictions, questions, choices=choices)
        per = {k: v / 100.0 for k, v in result["per_question"].items()}
        if result["entailed_missing"]:
            notes.append(f"{result['entailed_missing']} entailed questions are not in the scored question "
                         "set and were left out of consistency.")
        # The official headline numbers first, in eval.py's order; then its per-type breakdowns.
        metrics = {k: result.get(k) for k in ("accuracy", "binary", "open", "consistency", "validity",
                                              "plausibility", "distribution", "per_structural_type",
                                              "per_semantic_type", "per_steps_number", "per_words_number")}
        return Score(metrics, per, notes, _unavailable(metrics, extra))

    def write_synthetic(self, root: Path, num_examples: int, seed: int = 0,
                        splits: tuple[str, ...] | None = None) -> list[Path]:
        written = []
        for k, split in enumerate(splits or (self.train_split, self.eval_split)):
            balanced, all_questions, choices = {}, {}, {}
            for scene in make_scenes(num_examples, seed=seed + 1000 * k):
                image_id = f"n{1000 * k + scene.index}"
                save_image(render_scene(scene), root / "images" / f"{image_id}.jpg")
                base = f"{split}{scene.index:06d}"
                # A query question and the verify question it entails (GQA's consistency pairs).
                qa = {
                    f"{base}0": ("what color is the shape?", scene.color, "query", "attr", [f"{base}1"]),
                    f"{base}1": (f"is the shape {scene.color}?", "yes", "verify", "attr", [f"{base}0"]),
                }
                for qid, (question, answer, structural, semantic, entailed) in qa.items():
                    last = ({"operation": "query", "dependencies": [0], "argument": "color"} if structural == "query"
                            else {"operation": "verify color", "dependencies": [0], "argument": scene.color})
                    program = [{"operation": "select", "dependencies": [], "argument": "shape (0)"}, last]
                    q = {"imageId": image_id, "question": question, "answer": answer,
                         "fullAnswer": f"The shape is {scene.color}.", "isBalanced": True,
                         "groups": {"global": None, "local": f"{structural}-{semantic}"},
                         "types": {"structural": structural, "semantic": semantic,
                                   "detailed": f"{semantic}{structural.capitalize()}"},
                         "entailed": entailed, "equivalent": [qid], "semantic": program, "annotations": {}}
                    balanced[qid] = q
                    all_questions[qid] = q
                    valid = ["yes", "no"] if structural == "verify" else ["red", "green", "blue", "yellow",
                                                                         "purple", "orange"]
                    choices[qid] = {"valid": valid, "plausible": valid}
            written.append(write_json(self.balanced_file(root, split), balanced))
            written.append(write_json(root / f"{split}_all_questions.json", all_questions))
            written.append(write_json(root / f"{split}_choices.json", choices))
        return written
