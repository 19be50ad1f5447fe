"""`pgm predict`: answers about your own images, through exactly the code `pgm eval` runs.

Loading is `load_for_inference`, generation `generate_answers` (batched, greedy, left-padded);
this module adds only what predict has and eval has not: inputs from image paths or a JSONL
file, `--strip-special`, and PaliGemma's detection output decoded to boxes in pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from paligemma_cli.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.outputs import FileOutput
from paligemma_cli.tasks import Example

DEFAULT_PROMPT = "caption en"
DEFAULT_MAX_NEW_TOKENS = 64  # room for a caption, or several boxes (5 tokens each + label)
LOC_RANGE = 1024  # PaliGemma's <locNNNN> tokens split each image side into 1024 bins

_LOC = re.compile(r"<loc(\d{4})>")
_SPECIAL = re.compile(r"<loc\d{4}>|<seg\d{3}>")
# One detected object: 4 loc tokens (y_min, x_min, y_max, x_max), segmentation tokens for
# `segment` prompts, then the label up to the " ; " that separates objects.
_OBJECT = re.compile(r"((?:<loc\d{4}>){4})(?:<seg\d{3}>)*\s*([^;<]*)")


@dataclass(frozen=True)
class Box:
    """An object PaliGemma found, in pixels of the original image (x to the right, y down)."""

    label: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass
class Prediction:
    image: str  # as the user gave it
    prompt: str
    answer: str
    boxes: list[Box] | None = None  # for detect/segment prompts
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the --input line, passed through

    def record(self) -> dict[str, Any]:
        """The JSON line written by --output and --json."""
        rec = {**self.extra, "image": self.image, "prefix": self.prompt, "answer": self.answer}
        if self.boxes is not None:
            rec["boxes"] = [asdict(b) for b in self.boxes]
        return rec


def strip_special(text: str) -> str:
    """Drop <locNNNN>/<segNNN> tokens (`skip_special_tokens` keeps them: they are added tokens)."""
    return " ".join(_SPECIAL.sub(" ", text).split())


def is_detection_prompt(prompt: str) -> bool:
    return prompt.strip().lower().startswith(("detect ", "segment "))


def decode_boxes(text: str, width: int, height: int) -> list[Box]:
    """'<loc0256><loc0512><loc0768><loc1000> cat ; ...' -> boxes in pixels of a width x height image.

    Each coordinate is value / 1024 of the image side (PaliGemma's convention), so 1024 bins
    cover the image whatever size the processor resized it to.
    """
    boxes = []
    for match in _OBJECT.finditer(text):
        y_min, x_min, y_max, x_max = (int(v) / LOC_RANGE for v in _LOC.findall(match.group(1)))
        boxes.append(Box(match.group(2).strip(), round(x_min * width, 2), round(y_min * height, 2),
                         round(x_max * width, 2), round(y_max * height, 2)))
    return boxes


def examples_from_images(images: Sequence[Path], prompt: str) -> list[Example]:
    return [Example(id=str(p), image=Path(p), prefix=prompt, answers=[]) for p in images]


def read_input_file(path: Path, default_prompt: str) -> list[Example]:
    """JSON lines of {"image": path relative to the file, "prefix": prompt (optional), ...}."""
    source = f"--input {path}"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PgmError(f"Cannot read {source}: {exc.strerror}.", "Check the path.") from None
    except UnicodeDecodeError:
        raise PgmError(f"{source} is not UTF-8 text.", "Give a JSON-lines file.") from None
    examples = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PgmError(f"{source} line {lineno}: invalid JSON ({exc.msg}).",
                           "Each line must be one JSON object.") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str) \
                or not isinstance(rec.get("prefix", ""), str):
            raise PgmError(f"{source} line {lineno} needs \"image\" (a path) and optionally \"prefix\" (text).",
                           'Example: {"image": "img/1.jpg", "prefix": "answer en what is this?"}')
        extra = {k: v for k, v in rec.items() if k not in ("image", "prefix")}
        examples.append(Example(id=rec["image"], image=Path(path).parent / rec["image"],
                                prefix=rec.get("prefix") or default_prompt, answers=[], meta=extra))
    if not examples:
        raise PgmError(f"{source} holds no lines.", "Is it the right file?")
    return examples


def check_images(examples: Sequence[Example]) -> None:
    """Every image exists and opens, before a model loads (one line naming the first bad one)."""
    from paligemma_cli.tasks.sources import check_image_files

    try:
        check_image_files(list(examples))
    except PgmError as exc:  # same check as training; the fix differs
        raise PgmError(exc.message, "Check the IMAGE paths (those in --input are relative to its "
                                    "folder).") from None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def predict(model_cfg, examples: Sequence[Example], *, adapter: Path | None = None, max_new_tokens: int,
            batch_size: int, keep_special: bool = True, events: Events | None = None) -> list[Prediction]:
    """Generate an answer per example with `pgm eval`'s loader and generator."""
    from paligemma_cli.infer.generate import generate_answers
    from paligemma_cli.model.load import load_for_inference, load_processor

    check_images(examples)
    events = events or Events()
    processor = load_processor(model_cfg.model_path, model_cfg.revision)
    model = load_for_inference(model_cfg, adapter)
    events.eval_start(len(examples), "predict")
    answers = list(generate_answers(model, processor, examples, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size, on_batch=events.eval_advance))
    out = []
    for ex, raw in zip(examples, answers):
        boxes = decode_boxes(raw, *_image_size(ex.image)) if is_detection_prompt(ex.prefix) else None
        out.append(Prediction(str(ex.id), ex.prefix, raw if keep_special else strip_special(raw), boxes,
                              dict(ex.meta)))
    return out


def write_predictions(target: FileOutput, predictions: Sequence[Prediction]) -> Path:
    """The --output JSON lines, into a claimed file (`outputs.claim_file`): it replaces the path only
    when the claim ends, so a failed write leaves an earlier file as it was."""
    return target.write("".join(json.dumps(p.record()) + "\n" for p in predictions))
