"""GQA: compositional questions on Visual Genome images, scored by the official eval.py metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Sequence

from paligemma_cli.data.synthetic import make_scenes, render_scene, save_image
from paligemma_cli.tasks.base import Example, Score, Task, first_present, read_json, require_keys, write_json


class GQA(Task):
    name = "gqa"
    title = "GQA (balanced questions)"
    prompt_template = "answer en {question}"
    max_length = 64
    max_new_tokens = 16
    train_split = "train"
    eval_split = "testdev"
    id_key, answer_key = "questionId", "prediction"
    hf_id = ""  # no hub table ships GQA questions and images together; see README for the schema

    def balanced_file(self, root: Path, split: str) -> Path:
        return root / f"{split}_balanced_questions.json"

    def layout(self, split: str) -> str:
        return (f"{split}_balanced_questions.json (+ optional {split}_all_questions.json for consistency, "
                f"{split}_choices.json for validity/plausibility) and images/<imageId>.jpg")

    def training_target(self, example: Example, rng) -> str:
        return example.answers[0]

    def _example(self, qid: str, q: dict, root: Path, template: str | None) -> Example:
        return Example(id=str(qid), image=root / "images" / f"{q['imageId']}.jpg",
                       prefix=self.prefix(q["question"], template),
                       answers=[q["answer"]] if "answer" in q else [],
                       meta={"question": q["question"], "image_id": q["imageId"]})

    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Example]:
        path = self.balanced_file(root, split)
        data = read_json(path, "the GQA balanced questions file")
        if not isinstance(data, dict):
            require_keys(data, ["<questionId>"], str(path))
        examples = []
        for qid, q in data.items():
            require_keys(q, ["imageId", "question"], f"{path} question {qid}")
            examples.append(self._example(qid, q, root, template))
        return examples

    def load_score_extra(self, root: Path | None, split: str) -> dict[str, Any]:
        """The question set scored (all questions when present: consistency needs them) and choices."""
        if root is None:
            return {}
        extra: dict[str, Any] = {}
        all_q = root / f"{split}_all_questions.json"
        extra["questions"] = read_json(all_q if all_q.exists() else self.balanced_file(root, split),
                                       "the GQA questions file")
        choices = root / f"{split}_choices.json"
        if choices.exists():
            extra["choices"] = read_json(choices, "the GQA choices file")
        return extra

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        question = first_present(row, ["question"], "GQA hub dataset")
        answer = first_present(row, ["answer", "label"], "GQA hub dataset")
        qid = row.get("questionId", row.get("question_id", row.get("id", index)))
        return Example(id=str(qid), image=None, prefix=self.prefix(question, template), answers=[str(answer)],
                       meta={"question": question})

    def normalise_id(self, value: Any) -> Hashable:
        return str(value)

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.gqa import gqa_metrics

        questions = extra.get("questions")
        notes = []
        if questions is None:  # hub / JSONL source: balanced questions with no structure known
            questions = {ex.id: {"answer": ex.answers[0], "types": {"structural": "query"},
                                 "entailed": [], "isBalanced": True} for ex in examples}
            notes.append("Without the official questions file every question is scored as open.")
        else:
            wanted = {ex.id for ex in examples}
            # Score the evaluated balanced questions plus whatever they entail.
            keep = set(wanted)
            for qid in wanted:
                keep.update(str(e) for e in questions.get(qid, {}).get("entailed", []))
            questions = {qid: q for qid, q in questions.items()
                         if qid in keep and (qid in wanted or not q.get("isBalanced", True))}
            unpredicted = sum(1 for qid in questions if qid not in wanted and qid not in predictions)
            if unpredicted:
                notes.append(f"{unpredicted} questions entailed by the evaluated ones have no prediction and "
                             "count as wrong in consistency (the official score needs predictions for "
                             "all of <split>_all_questions.json).")
        result = gqa_metrics(predictions, questions, choices=extra.get("choices"))
        per = {k: v / 100.0 for k, v in result["per_question"].items()}
        if result["entailed_missing"]:
            notes.append(f"{result['entailed_missing']} entailed questions are not in the scored question "
                         "set and were left out of consistency.")
        # The official headline numbers first, in eval.py's order; then the per-type breakdown.
        metrics = {k: result.get(k) for k in ("accuracy", "binary", "open", "consistency", "validity",
                                              "plausibility", "distribution")}
        unavailable = {}
        if "questions" not in extra:
            for name in ("binary", "consistency"):
                metrics[name] = None
                unavailable[name] = "needs the official <split>_balanced_questions.json (--data-root)."
        if "choices" not in extra:
            unavailable["validity"] = unavailable["plausibility"] = "needs the choices file <split>_choices.json."
        if metrics["distribution"] is None:
            unavailable["distribution"] = "no scored question has an answer group (groups.global)."
        metrics["per_structural_type"] = result["per_structural_type"]
        metrics["per_semantic_type"] = result["per_semantic_type"]
        return Score(metrics, per, notes, unavailable)

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
                    q = {"imageId": image_id, "question": question, "answer": answer,
                         "fullAnswer": f"The shape is {scene.color}.", "isBalanced": True,
                         "groups": {"global": None, "local": f"{structural}-{semantic}"},
                         "types": {"structural": structural, "semantic": semantic,
                                   "detailed": f"{semantic}{structural.capitalize()}"},
                         "entailed": entailed, "equivalent": [qid], "semantic": [], "annotations": {}}
                    balanced[qid] = q
                    all_questions[qid] = q
                    valid = ["yes", "no"] if structural == "verify" else ["red", "green", "blue", "yellow",
                                                                         "purple", "orange"]
                    choices[qid] = {"valid": valid, "plausible": valid}
            written.append(write_json(self.balanced_file(root, split), balanced))
            written.append(write_json(root / f"{split}_all_questions.json", all_questions))
            written.append(write_json(root / f"{split}_choices.json", choices))
        return written
