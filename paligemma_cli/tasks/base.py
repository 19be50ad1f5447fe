"""What a task is: where its examples come from, how it prompts, what it is scored by.

A task file (one per data set) subclasses `Task` and fills in the official on-disk loader, the
hub-row mapping, the training target, the official result format, the scorer and the writer of
synthetic data. The three data sources (official layout, hub dataset, JSONL) all end as a list of
examples whose images are loaded only when a batch needs them: `Example`s, or for the official
files compact `Record`s (tasks/records.py) with the same attributes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from paligemma_cli.errors import PgmError


@dataclass
class Example:
    """One question (or image, for captioning). `image` is a path or a zero-argument loader."""

    id: Hashable
    image: Path | Callable[[], Any] | None
    prefix: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    """A scorer's result: headline metrics (the keys of metrics.json) and per-example scores."""

    metrics: dict[str, Any]
    per_example: dict[Hashable, float]
    notes: list[str] = field(default_factory=list)
    # Metrics that could not be computed (their value in `metrics` is None): name -> why / how to fix.
    unavailable: dict[str, str] = field(default_factory=dict)


class Task:
    name: str = ""
    title: str = ""
    prompt_template: str = "answer en {question}"
    max_length: int = 64
    max_new_tokens: int = 16
    group_by_length: bool = False  # `pgm train`'s default for --group-by-length
    train_split: str = "train"
    eval_split: str = "val"
    headline: str = "accuracy"  # the metric `--eval-steps` tracks (higher is better)
    headline_scale: float = 1.0  # x this puts the headline on the 0-100 scale papers report
    id_key: str = "question_id"  # id field of the official result format
    id_type: type = int  # what the official files' ids are (results may write them as strings)
    answer_key: str = "answer"  # answer field of the official result format
    hf_id: str = ""
    hf_splits: dict[str, str] = {}

    # ----- prompts and targets -------------------------------------------------------------

    def headline_0_100(self, metrics: dict) -> float | None:
        """The headline metric on the 0-100 scale papers use (ANLS and CIDEr x 100), None if absent."""
        value = metrics.get(self.headline)
        return None if value is None else float(value) * self.headline_scale

    def prefix(self, question: str | None, template: str | None = None) -> str:
        return (template or self.prompt_template).format(question=question or "").strip()

    def training_target(self, example: Example, rng: random.Random) -> str:
        """The suffix to supervise; default the first reference."""
        return example.answers[0]

    # ----- the three sources ---------------------------------------------------------------
    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Example]:
        raise NotImplementedError

    def layout(self, split: str) -> str:
        """One line describing the official on-disk layout (for errors and `pgm data layout`)."""
        raise NotImplementedError

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        raise NotImplementedError

    hf_image_column: str = "image"

    # ----- results and scoring -------------------------------------------------------------
    def result_record(self, example: Example, prediction: str) -> dict[str, Any]:
        """One prediction in the eval server's official result format."""
        return {self.id_key: example.id, self.answer_key: prediction}

    def parse_results(self, records: Iterable[tuple[str, Any]], source: str) -> dict[Hashable, str]:
        """Official-format records, each with where it is ("line 3", "item 3") -> {id: prediction}.

        Extra keys are ignored (pgm's predictions.jsonl adds prompt, references, score); a
        record without the two official keys, or whose answer is not a string, is an error naming
        it. A number is not taken as its text: vqaEval.py and the RRC ANLS script stop on one
        (they call string methods on it) and GQA's eval.py counts it wrong (2 != "2").
        """
        out: dict[Hashable, str] = {}
        for where, rec in records:
            if not isinstance(rec, dict) or self.id_key not in rec or self.answer_key not in rec:
                raise PgmError(f"{source} {where}: a {self.name} result needs "
                               f"{{\"{self.id_key}\": ..., \"{self.answer_key}\": ...}}.",
                               self._format_hint(rec))
            answer = rec[self.answer_key]
            if not isinstance(answer, str):
                raise PgmError(f"{source} {where}: \"{self.answer_key}\" must be a string "
                               f"(got {json.dumps(answer)[:60]}).",
                               'Write every answer as a JSON string (e.g. "2"): official scorers take only strings.')
            out[self.normalise_id(rec[self.id_key])] = answer
        return out

    def _format_hint(self, rec: Any) -> str:
        """Name the task whose official format `rec` has, when it is another one."""
        if not isinstance(rec, dict):
            return f"Got {type(rec).__name__}, not an object; is it the right file?"
        keys = sorted(map(str, rec))
        shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        for other in Task.__subclasses__():  # every task's class (the registry imports this module)
            if other is not type(self) and other.id_key in rec and other.answer_key in rec:
                return f"Got keys [{shown}]: that is the {other.name} format; is --task right?"
        return f"Got keys [{shown}]; is --task right?"

    def normalise_id(self, value: Any) -> Hashable:
        """Ids as the official files hold them: ints for VQAv2, DocVQA and COCO (GQA: str).

        Only exact conversions: "10010" or 10010.0 is 10010, but 10010.5 (or True) stays as it is,
        so it is reported as an unknown id instead of being scored as question 10010.
        """
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            return value
        try:
            return self.id_type(value)
        except (TypeError, ValueError, OverflowError):
            return value

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        """Score {id: prediction}. `extra` holds load_score_extra's files and scorer options; with
        extra["headline_only"] a task may compute only its headline metric (COCO: CIDEr alone)."""
        raise NotImplementedError

    def load_score_extra(self, root: Path | None, split: str) -> dict[str, Any]:
        """Files beyond the examples that scoring uses (GQA: all questions, choices)."""
        return {}

    # ----- synthetic data ------------------------------------------------------------------
    def write_synthetic(self, root: Path, num_examples: int, seed: int = 0,
                        splits: tuple[str, ...] | None = None) -> list[Path]:
        raise NotImplementedError


# ----- helpers the task files share ----------------------------------------------------------

def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def first_present(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise PgmError(f"{where}: none of the columns {list(names)} is present (has {sorted(row)}).",
                   "Use a dataset with the documented schema, or convert it to JSONL (--train-file).")
