"""COCO Captions (official `captions_<split>.json`, or the Karpathy split), scored by pycocoevalcap."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Optional, Sequence

import msgspec

from paligemma_cli.data.synthetic import make_scenes, render_scene, save_image
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks.base import Example, Score, Task, first_present, write_json
from paligemma_cli.tasks.records import Record, RecordKind, decode_json


# Only the fields pgm uses; msgspec skips the rest (licenses, sizes, tokens, ...).
class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str


class _Caption(msgspec.Struct, gc=False):
    image_id: int
    caption: str


class _CaptionsFile(msgspec.Struct):
    images: list[_Image]
    annotations: list[_Caption]


class _Sentence(msgspec.Struct, gc=False):
    raw: str


class _KarpathyImage(msgspec.Struct, gc=False):
    filepath: str
    filename: str
    split: str
    sentences: list[_Sentence]
    cocoid: Optional[int] = None
    imgid: Optional[int] = None


class _KarpathyFile(msgspec.Struct):
    images: list[_KarpathyImage]

KARPATHY = {"karpathy-train": ("train", "restval"), "karpathy-val": ("val",), "karpathy-test": ("test",)}


class COCOCaptions(Task):
    name = "coco"
    title = "COCO Captions"
    prompt_template = "caption en"
    max_length = 64
    max_new_tokens = 48
    group_by_length = True  # captions of 8 to 30+ tokens
    train_split = "train2017"
    eval_split = "val2017"
    headline = "CIDEr"
    headline_scale = 100.0  # papers report CIDEr x 100
    id_key, answer_key = "image_id", "caption"
    hf_id = "lmms-lab/COCO-Caption2017"
    hf_splits = {"val2017": "val"}

    def layout(self, split: str) -> str:
        if split in KARPATHY:
            return "dataset_coco.json (Karpathy split) with images at <filepath>/<filename>"
        return f"annotations/captions_{split}.json with images in {split}/<file_name>"

    def training_target(self, example: Example, rng) -> str:
        return rng.choice(example.answers)

    def load_official(self, root: Path, split: str, template: str | None = None) -> list[Record]:
        template = template or self.prompt_template
        if split in KARPATHY:
            images = decode_json(root / "dataset_coco.json", "the Karpathy split file", _KarpathyFile).images
            kind = RecordKind(root, "{}", template, (None, None, None))
            return [Record(im.cocoid if im.cocoid is not None else im.imgid, None, [s.raw for s in im.sentences],
                           f"{im.filepath}/{im.filename}", None, kind)
                    for im in images if im.split in KARPATHY[split]]
        data = decode_json(root / "annotations" / f"captions_{split}.json", "the COCO captions file", _CaptionsFile)
        captions: dict[int, list[str]] = {}
        for ann in data.annotations:
            captions.setdefault(ann.image_id, []).append(ann.caption)
        kind = RecordKind(root / split, "{}", template, (None, "file_name", None))
        return [Record(im.id, None, captions.get(im.id, []), im.file_name, None, kind) for im in data.images]

    def from_hf_row(self, row: dict[str, Any], index: int, template: str | None) -> Example:
        captions = first_present(row, ["captions", "sentences", "answer", "caption"], self.hf_id)
        captions = [captions] if isinstance(captions, str) else [
            c["raw"] if isinstance(c, dict) else str(c) for c in captions]
        image_id = row.get("image_id", row.get("cocoid", row.get("id", index)))
        return Example(id=int(image_id) if str(image_id).isdigit() else image_id, image=None,
                       prefix=self.prefix(None, template), answers=captions, meta={})

    def score(self, predictions: dict[Hashable, str], examples: Sequence[Example],
              extra: dict[str, Any]) -> Score:
        from paligemma_cli.metrics.captioning import caption_metrics

        refs = {ex.id: ex.answers for ex in examples}
        if any(not r for r in refs.values()):
            raise PgmError("Some images have no reference captions (a test split?).",
                           "Use --submission to write results for the eval server instead of scoring.")
        # extra["headline_only"]: CIDEr alone (pgm study's cells), not METEOR's and SPICE's JVMs
        result = caption_metrics(predictions, refs, cider_only=bool(extra.get("headline_only")))
        per = {k: v.get("CIDEr", 0.0) for k, v in result["per_image"].items()}
        unavailable = dict(result.get("unavailable", {}))
        metrics = {**result["metrics"], **{name: None for name in unavailable}}
        return Score(metrics, per, unavailable=unavailable)

    def write_synthetic(self, root: Path, num_examples: int, seed: int = 0,
                        splits: tuple[str, ...] | None = None) -> list[Path]:
        written = []
        karpathy_images = []
        for k, split in enumerate(splits or (self.train_split, self.eval_split)):
            images, annotations = [], []
            for scene in make_scenes(num_examples, seed=seed + 1000 * k):
                image_id = 1000 * k + scene.index + 1
                name = f"{image_id:012d}.jpg"
                save_image(render_scene(scene), root / split / name)
                images.append({"id": image_id, "file_name": name, "width": 64, "height": 64})
                caps = [scene.caption, f"a picture of {scene.caption}", scene.caption.replace(" on a", " with a")]
                for j, cap in enumerate(caps):
                    annotations.append({"id": image_id * 10 + j, "image_id": image_id, "caption": cap})
                karpathy_images.append({"filepath": split, "filename": name, "imgid": image_id, "cocoid": image_id,
                                        "split": "train" if k == 0 else "val",
                                        "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})
            written.append(write_json(root / "annotations" / f"captions_{split}.json", {
                "info": {"description": "pgm synthetic COCO-format captions"}, "licenses": [],
                "images": images, "annotations": annotations}))
        written.append(write_json(root / "dataset_coco.json", {"dataset": "coco", "images": karpathy_images}))
        return written
