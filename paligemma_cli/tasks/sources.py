"""The three data sources every task reads: official on-disk layout, a hub dataset, JSONL.

All of them end as a list of `Example`s whose images are opened only when a batch needs them;
the image files are checked up front (existence and a header read; see `data.image_check`) so a
missing or corrupt image fails before training starts, naming the first and counting the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from paligemma_cli.config import DataConfig
from paligemma_cli.events import Events
from paligemma_cli.errors import PgmError
from paligemma_cli.tasks import Example, Task
from paligemma_cli.tasks.records import paused_gc


def split_for(task: Task, data: DataConfig, role: str) -> str:
    if role == "train":
        return data.train_split or task.train_split
    return data.eval_split or task.eval_split


def load_examples(task: Task, data: DataConfig, role: str, *, check_images: bool = True) -> list[Example]:
    """Examples for `role` ('train' or 'eval') from whichever source `data` names."""
    split = split_for(task, data, role)
    limit = data.max_train_samples if role == "train" else data.max_eval_samples
    if data.train_file is not None or data.eval_file is not None:
        path = data.train_file if role == "train" else (data.eval_file or None)
        if path is None:
            raise PgmError("--train-file is given but --eval-file is not.",
                           "Add --eval-file EVAL.jsonl (same format; suffix may be a list of references).")
        examples = read_jsonl(task, Path(path), limit)
    elif data.data_root is not None:
        root = Path(data.data_root)
        if not root.is_dir():
            raise PgmError(f"--data-root {root} is not a folder.",
                           f"Expected the official {task.name} layout: {task.layout(split)}.")
        try:
            with paused_gc():
                examples = task.load_official(root, split, data.prompt)[:limit]
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a field of the wrong shape
            detail = f"no field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise PgmError(f"The {task.name} {split} files in {root} do not have the official schema ({detail}).",
                           f"Expected: {task.layout(split)}.") from None
    else:
        examples = load_hub(task, data.hf_dataset or task.hf_id, split, data.prompt, limit)
    if not examples:
        raise PgmError(f"No {role} examples in the {task.name} {split} data.",
                       "Check the data source and the split names.")
    if check_images:
        check_image_files(examples)
    return examples


# ----- JSONL ------------------------------------------------------------------------------------

def read_jsonl(task: Task, path: Path, limit: int | None) -> list[Example]:
    """Lines of {"image": path, "prefix": str, "suffix": str | [str, ...]} (+ optional "id", and for VQAv2
    scoring "answer_type", "question_type")."""
    if not path.is_file():
        raise PgmError(f"JSONL file {path} does not exist.", "Check the --train-file/--eval-file path.")
    examples = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise PgmError(f"{path} line {lineno} is not valid JSON.", "Each line must be one JSON object.") from None
            if not isinstance(rec, dict) or "image" not in rec or "suffix" not in rec:
                raise PgmError(f"{path} line {lineno} needs \"image\" and \"suffix\" (and \"prefix\").",
                               'Example: {"image": "img/1.jpg", "prefix": "answer en what is it?", "suffix": "a cat"}')
            suffix = rec["suffix"]
            answers = [str(s) for s in suffix] if isinstance(suffix, list) else [str(suffix)]
            prefix = rec.get("prefix", task.prefix(None))
            meta = {"answer_type": rec.get("answer_type"), "question_type": rec.get("question_type")}
            examples.append(Example(id=rec.get("id", lineno), image=(path.parent / rec["image"]),
                                    prefix=prefix, answers=answers, meta=meta))
            if limit and len(examples) >= limit:
                break
    return examples


# ----- hub datasets -----------------------------------------------------------------------------

def _open_hub_dataset(name: str, split: str):
    """A `datasets.Dataset` from a hub id, a `save_to_disk` folder, or a folder of parquet files."""
    import datasets

    path = Path(name)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
        elif path.is_dir() and list(path.rglob("*.parquet")):
            files = sorted(str(p) for p in path.rglob("*.parquet"))
            by_split = {s: [f for f in files if f"{s}" in Path(f).name] for s in (split,)}
            ds = datasets.load_dataset("parquet", data_files=by_split[split] or files, split="train")
        else:
            ds = datasets.load_dataset(name, split=split)
    except PgmError:
        raise
    except Exception as exc:  # hub / disk errors become one line
        text = f"{type(exc).__name__}: {exc}"
        hint = ("It is not cached and the hub is unreachable: download it online once, or use --data-root."
                if "offline" in text.lower() or "connect" in text.lower() or "Couldn't find" in text
                else "Check the dataset id/folder and --eval-split/--train-split.")
        raise PgmError(f"Could not load dataset {name!r} split {split!r} ({type(exc).__name__}).", hint) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PgmError(f"Dataset {name} has no split {split!r}.", f"Available: {', '.join(ds)}.")
        ds = ds[split]
    return ds


def load_hub(task: Task, name: str, split: str, template: str | None, limit: int | None) -> list[Example]:
    if not name:
        raise PgmError(f"No data source for {task.name}.",
                       "Give --data-root (official layout), --hf-dataset, or --train-file/--eval-file.")
    ds = _open_hub_dataset(name, task.hf_splits.get(split, split))
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    image_col = task.hf_image_column
    if image_col not in ds.column_names:
        raise PgmError(f"Dataset {name} has no {image_col!r} column (has {ds.column_names}).",
                       "Use a dataset with images embedded, or convert it to JSONL (--train-file).")
    meta = ds.remove_columns([image_col])
    examples = []
    for i, row in enumerate(meta):
        ex = task.from_hf_row(row, i, template)
        ex.image = _hub_image_loader(ds, i, image_col)
        examples.append(ex)
    return examples


def _hub_image_loader(ds, index: int, column: str) -> Callable[[], Any]:
    return lambda: ds[index][column]


# ----- images -----------------------------------------------------------------------------------

def check_image_files(examples: list[Example], events: Events | None = None, *, rank: int = 0,
                      world: int = 1, gather: Callable[[list], list] | None = None) -> None:
    """Fail before training on missing/unreadable image files: name the first, count the rest.

    Threads and the PGM_HOME cache (data.image_check), progress through `events`. Under several
    processes each checks its 1/`world` of the images and `gather` (accelerate's gather_object)
    combines the results, so every process raises the same error.
    """
    from paligemma_cli.data.image_check import check_images, combine, image_files

    events = events or Events()
    paths = image_files(examples)
    share = len(paths[rank::world])
    events.phase_start(f"Checking {len(paths):,} image files" + (f" ({share:,} here)" if world > 1 else ""),
                       total=share)
    result = check_images(paths, rank=rank, world=world, advance=events.phase_advance)
    results = gather([result]) if gather is not None and world > 1 else [result]
    combine(results, len(paths))
    cached = sum(r.cached for r in results)
    events.phase_end(f"all open ({cached:,} unchanged since an earlier check)" if cached else "all open")
