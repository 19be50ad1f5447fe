"""The bad-input catalogue: every command, fed distinct bad inputs, fails with one clear line.

Each case builds its inputs under tmp_path and runs the real console entry point
(`python -m paligemma_cli ...`) offline. It must exit non-zero with no traceback and exactly one
`Error:` line naming the flag or file and the fix, and leave every user file as it was: every file
that existed is byte-identical afterwards, and no new file appears in a folder that existed (a
new output folder pgm creates may hold its ownership marker). The shared synthetic data set is
hashed too. Cases fail before any model loads, so each costs one interpreter start (plus the torch
import where the data is read).

A few bad values never reach pgm: Typer rejects a value outside a flag's choices, or a word
where a number goes, with its usage box (exit 2); those cases (`usage=True`) check the box names
the flag and points at `--help`.

docs/troubleshooting.md lists the count and the coverage; keep them in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

VQA_Q = "v2_OpenEnded_mscoco_train2014_questions.json"
VQA_A = "v2_mscoco_train2014_annotations.json"
TINY = ["--model-path", "tiny"]


@dataclass
class Case:
    args: list
    needles: list[str]  # each must appear in the error line: the problem (flag/file) and the fix
    usage: bool = False  # rejected by Typer's own parser, before pgm runs


class Inputs:
    """What a case may build on: tmp (its own folder) and the shared synthetic data (read only)."""

    def __init__(self, tmp: Path, synthetic_data: Callable):
        self.tmp, self._synthetic, self.cleanups = tmp, synthetic_data, []

    def data(self) -> Path:
        return self._synthetic("vqav2", 4)

    def synthetic(self, task: str) -> Path:
        return self._synthetic(task, 4)

    def copy(self) -> Path:
        """A private copy of the synthetic VQAv2 data, to break."""
        return Path(shutil.copytree(self.data(), self.tmp / "data"))

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def folder(self, name: str, **files: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True)
        for fname, text in files.items():
            (path / fname.replace("__", ".")).write_text(text)
        return path

    def read_only(self, name: str) -> Path:
        """An empty folder nobody may write into (root included: the immutable attribute)."""
        path = self.folder(name)
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("running as root on a file system without chattr +i")
            self.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(path)]))
        else:
            path.chmod(0o555)
            self.cleanups.append(lambda: path.chmod(0o755))
        return path

    def busy(self, name: str, kind: str) -> Path:
        """A folder another pgm process is writing right now (it holds the lock until the case ends)."""
        path = self.tmp / name
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom paligemma_cli.outputs import claim_output\n"
             f"with claim_output(sys.argv[1], {kind!r}):\n    print('ready', flush=True)\n    time.sleep(300)\n",
             str(path)], stdout=subprocess.PIPE, text=True)
        self.cleanups.append(lambda: (holder.kill(), holder.wait()))
        assert holder.stdout.readline().strip() == "ready"
        return path

    def previous_run(self, name: str, kind: str = "train", folders: tuple[str, ...] = (), **files: str) -> Path:
        """A folder a previous pgm run wrote (its marker lists its files and `folders`)."""
        path = self.folder(name, **files)
        for folder in folders:
            (path / folder).mkdir()
        written = [f.replace("__", ".") for f in files] + list(folders)
        (path / ".pgm-run.json").write_text(json.dumps({"tool": "pgm", "kind": kind, "written": written}))
        return path


CASES: dict[str, Callable[[Inputs], Case]] = {}


def case(name: str):
    def register(build: Callable[[Inputs], Case]) -> Callable[[Inputs], Case]:
        CASES[name] = build
        return build

    return register


def train(i: Inputs, *args, data: Path | None = None, out: str | Path = "out") -> list:
    data = data if data is not None else i.data()
    out = out if isinstance(out, Path) else i.tmp / out
    return ["train", "vqav2", *TINY, "--data-root", data, "--output-dir", out, *args]


# ----- pgm train: data ------------------------------------------------------------------------

@case("train: unknown task")
def _(i):
    return Case(["train", "vqa3", "--data-root", i.data()], ["Unknown task 'vqa3'", "Supported: coco, docvqa, gqa, vqav2"])


@case("train: --data-root with markup characters, missing")
def _(i):
    return Case(train(i, data=i.tmp / "[bold]data"), ["[bold]data", "is not a folder"])


@case("train: --data-root missing")
def _(i):
    return Case(train(i, data=i.tmp / "nowhere"), ["--data-root", "nowhere", "is not a folder", "Expected the official"])


@case("train: official annotations file missing")
def _(i):
    data = i.copy()
    (data / VQA_A).unlink()
    return Case(train(i, data=data), [VQA_A, "does not exist", "Check --data-root"])


@case("train: official file is malformed JSON")
def _(i):
    data = i.copy()
    (data / VQA_Q).write_text('{"questions": [{"question_id": 1,')
    return Case(train(i, data=data), [VQA_Q, "is not valid JSON", "Re-download"])


@case("train: official file has the wrong schema")
def _(i):
    data = i.copy()
    (data / VQA_Q).write_text(json.dumps({"images": []}))
    return Case(train(i, data=data), [VQA_Q, "no field 'questions'", "right file"])


@case("train: official entries have the wrong schema")
def _(i):
    data = i.copy()
    (data / VQA_A).write_text(json.dumps({"annotations": [{"id": 1, "answer": "red"}]}))
    return Case(train(i, data=data), [VQA_A, "question_id", "right file"])


@case("train: image id of the wrong type")
def _(i):
    data = i.copy()
    questions = json.loads((data / VQA_Q).read_text())
    questions["questions"][0]["image_id"] = "first"
    (data / VQA_Q).write_text(json.dumps(questions))
    return Case(train(i, data=data), [VQA_Q, "image_id", "'first'"])


@case("train: official entries of another shape (coco)")
def _(i):
    data = Path(shutil.copytree(i.synthetic("coco"), i.tmp / "coco"))
    captions = data / "annotations" / "captions_train2017.json"
    content = json.loads(captions.read_text())
    content["annotations"] = [{"image_id": a["image_id"], "text": a["caption"]} for a in content["annotations"]]
    captions.write_text(json.dumps(content))
    return Case(["train", "coco", *TINY, "--data-root", data, "--output-dir", i.tmp / "out"],
                ["captions_train2017.json", "official schema", "no field 'caption' at $.annotations[0]"])


@case("train: official file unreadable (a folder)")
def _(i):
    data = i.copy()
    (data / VQA_Q).unlink()
    (data / VQA_Q).mkdir()
    return Case(train(i, data=data), ["Cannot read", VQA_Q, "permissions"])


@case("train: image missing")
def _(i):
    data = i.copy()
    image = sorted((data / "train2014").iterdir())[0]
    image.unlink()
    return Case(train(i, data=data), [image.name, "is missing", "Check --data-root"])


@case("train: corrupt image")
def _(i):
    data = i.copy()
    image = sorted((data / "train2014").iterdir())[1]
    image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return Case(train(i, data=data), [image.name, "unreadable", "Re-download"])


@case("train: --train-file missing")
def _(i):
    return Case(["train", "vqav2", *TINY, "--train-file", i.tmp / "train.jsonl", "--output-dir", i.tmp / "out"],
                ["train.jsonl", "does not exist", "--train-file"])


@case("train: --train-file line is not JSON")
def _(i):
    f = i.file("train.jsonl", '{"image": "a.jpg", "prefix": "caption en", "suffix": "x"}\n{"image": \n')
    return Case(["train", "vqav2", *TINY, "--train-file", f, "--output-dir", i.tmp / "out"],
                ["train.jsonl line 2 is not valid JSON", "one JSON object"])


@case("train: --train-file line lacks suffix")
def _(i):
    f = i.file("train.jsonl", '{"image": "a.jpg", "prefix": "caption en", "answer": "x"}\n')
    return Case(["train", "vqav2", *TINY, "--train-file", f, "--output-dir", i.tmp / "out"],
                ["train.jsonl line 1 needs", '"suffix"', "Example:"])


# ----- pgm train: flags and --config ------------------------------------------------------------

@case("train: two data sources")
def _(i):
    f = i.file("train.jsonl", "")
    return Case(train(i, "--train-file", f), ["give one data source, not --data-root and --train-file", "--help"])


@case("train: --resume with --overwrite")
def _(i):
    return Case(train(i, "--resume", "--overwrite"), ["--resume", "--overwrite", "give one"])


@case("train: --learning-rate negative")
def _(i):
    return Case(train(i, "--learning-rate", "-1e-4"), ["--learning-rate must be > 0 (got -0.0001)", "--help"])


@case("train: --lora-dropout above range")
def _(i):
    return Case(train(i, "--lora-dropout", "1.5"), ["--lora-dropout must be <= 0.99 (got 1.5)", "--help"])


@case("train: --learning-rate nan")
def _(i):
    return Case(train(i, "--learning-rate", "nan"), ["--learning-rate must be a finite number (got nan)", "--help"])


@case("train: --weight-decay nan")
def _(i):
    return Case(train(i, "--weight-decay", "nan"), ["--weight-decay must be a finite number (got nan)"])


@case("train: --warmup-ratio nan")
def _(i):
    return Case(train(i, "--warmup-ratio", "nan"), ["--warmup-ratio must be a finite number (got nan)"])


@case("train: --num-epochs nan")
def _(i):
    return Case(train(i, "--num-epochs", "nan"), ["--num-epochs must be a finite number (got nan)"])


@case("train: --num-epochs inf")
def _(i):
    return Case(train(i, "--num-epochs", "inf"), ["--num-epochs must be a finite number (got inf)"])


@case("train: --lora-dropout nan")
def _(i):
    return Case(train(i, "--lora-dropout", "nan"), ["--lora-dropout must be a finite number (got nan)"])


@case("train: --max-grad-norm nan")
def _(i):
    return Case(train(i, "--max-grad-norm", "nan"), ["--max-grad-norm must be a finite number (got nan)"])


@case("train: --lora-alpha inf")
def _(i):
    return Case(train(i, "--lora-alpha", "inf"), ["--lora-alpha must be a finite number (got inf)"])


@case("train: --config value nan")
def _(i):
    f = i.file("run.yaml", "learning_rate: .nan\n")
    return Case(train(i, "--config", f), ["--learning-rate must be a finite number (got nan)"])


@case("train: --lora-targets unknown part")
def _(i):
    return Case(train(i, "--lora-targets", "language,decoder"),
                ["--lora-targets takes a comma list of language, vision, projector", "'language,decoder'"])


@case("train: --quantization not a choice")
def _(i):
    return Case(train(i, "--quantization", "3bit"), ["--quantization", "'3bit' is not one of", "train -h' for help"], usage=True)


@case("train: --batch-size not a number")
def _(i):
    return Case(train(i, "--batch-size", "two"), ["--batch-size", "integer", "train -h' for help"], usage=True)


@case("train: --config missing")
def _(i):
    return Case(train(i, "--config", i.tmp / "run.yaml"), ["Cannot read --config", "run.yaml", "Check the path"])


@case("train: --config not YAML")
def _(i):
    f = i.file("run.yaml", "learning_rate: 1e-4\nbatch_size: [2\n")
    return Case(train(i, "--config", f), ["--config", "run.yaml line", "is not valid YAML", "Fix the syntax"])


@case("train: --config unknown key")
def _(i):
    f = i.file("run.yaml", "learning_rat: 1.0e-4\n")
    return Case(train(i, "--config", f), ["unknown key 'learning_rat'", "Did you mean 'learning_rate'"])


@case("train: --config value of the wrong type")
def _(i):
    f = i.file("run.yaml", "batch_size: many\n")
    return Case(train(i, "--config", f), ["--batch-size has the wrong type: 'many'", "Expected int"])


@case("train: --config not a mapping")
def _(i):
    f = i.file("run.yaml", "- learning_rate\n- 1e-4\n")
    return Case(train(i, "--config", f), ["must be a mapping of flag names to values", "Example:"])


# ----- pgm train: output dir, resume, model -----------------------------------------------------

@case("train: output dir holds foreign files")
def _(i):
    i.folder("out", notes__txt="mine")
    return Case(train(i), ["--output-dir", "holds notes.txt, which pgm did not write", "move it away"])


@case("train: --overwrite of a folder with a foreign file")
def _(i):
    i.folder("out", README__md="my notes")
    return Case(train(i, "--overwrite"), ["README.md, which pgm did not write", "--overwrite replaces only what pgm wrote"])


@case("train: --overwrite of a previous run beside a foreign file")
def _(i):
    out = i.previous_run("out", adapter_model__safetensors="w", run_config__json="{}")
    (out / "notes.txt").write_text("my notes on this run")
    return Case(train(i, "--overwrite"), ["holds notes.txt, which pgm did not write", "move it away"])


@case("train: output dir in use by another pgm run")
def _(i):
    i.busy("out", "train")
    return Case(train(i), ["--output-dir", "is in use: pgm train (process", "Wait for it to finish"])


@case("train: output dir holds a previous run")
def _(i):
    i.previous_run("out", adapter_model__safetensors="w", run_config__json="{}")
    return Case(train(i), ["holds a previous pgm train", "--resume", "--overwrite"])


@case("train: output dir is a file")
def _(i):
    i.file("out", "a file")
    return Case(train(i), ["--output-dir", "is a file", "folder path"])


@case("train: output dir read-only")
def _(i):
    return Case(train(i, out=i.read_only("out")), ["--output-dir", "is not writable", "Choose a folder"])


@case("train: --resume with nothing to resume")
def _(i):
    return Case(train(i, "--resume"), ["--resume", "holds no pgm run to resume", "Drop --resume"])


@case("train: --resume when the only checkpoint is truncated")
def _(i):
    out = i.previous_run("out", folders=("checkpoints",), run_config__json="{}", train_log__jsonl="")
    step = out / "checkpoints" / "step-00000004"
    step.mkdir()
    (step / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (step / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")  # cut short
    return Case(train(i, "--resume"), ["no complete checkpoint", "step-00000004: adapter_model.safetensors is truncated",
                                       "--overwrite"])


@case("train: --resume without a complete checkpoint")
def _(i):
    out = i.previous_run("out", folders=("checkpoints",), run_config__json="{}", train_log__jsonl="")
    (out / "checkpoints" / ".tmp-step-00000004").mkdir()  # a crash mid-save left only this
    return Case(train(i, "--resume"), ["--resume: no complete checkpoint", "checkpoints", "--overwrite"])


@case("train: --model-path missing")
def _(i):
    args = train(i)
    args[args.index("tiny")] = i.tmp / "no-model"
    return Case(args, ["--model-path", "no-model", "does not exist", "hub id"])


@case("train: --model-path is an adapter")
def _(i):
    adapter = i.folder("adapter", adapter_config__json=json.dumps({"base_model_name_or_path": "tiny"}))
    args = train(i)
    args[args.index("tiny")] = adapter
    return Case(args, ["is a LoRA adapter, not a model", "--model-path tiny --adapter"])


# ----- pgm eval ---------------------------------------------------------------------------------

def evaluate(i: Inputs, *args) -> list:
    return ["eval", "--task", "vqav2", "--data-root", i.data(), "--output-dir", i.tmp / "eval", *args]


@case("eval: unknown task")
def _(i):
    return Case(["eval", "--task", "vqa9", "--predictions", i.file("p.json", "[]")],
                ["Unknown task 'vqa9'", "Supported:"])


@case("eval: --predictions missing")
def _(i):
    return Case(evaluate(i, "--predictions", i.tmp / "results.json"),
                ["Cannot read --predictions", "results.json", "Check the path"])


@case("eval: --predictions malformed JSON")
def _(i):
    f = i.file("results.jsonl", '{"question_id": 10, "answer": "red"}\n{"question_id": 11, "answer": \n')
    return Case(evaluate(i, "--predictions", f), ["results.jsonl", "line 2"])


@case("eval: --predictions of another task's format")
def _(i):
    f = i.file("results.json", json.dumps([{"questionId": "10", "prediction": "red"}]))
    return Case(evaluate(i, "--predictions", f), ["results.json", "item 1", "question_id", "--task"])


@case("eval: --predictions with --adapter")
def _(i):
    return Case(evaluate(i, "--predictions", i.file("p.json", "[]"), "--adapter", i.folder("run")),
                ["--predictions and --adapter exclude each other", "not both"])


@case("eval: --adapter without adapter_config.json")
def _(i):
    return Case(evaluate(i, *TINY, "--adapter", i.folder("run", notes__txt="x")),
                ["--adapter", "has no adapter_config.json", "checkpoint"])


@case("eval: --predictions with markup characters, missing")
def _(i):
    return Case(evaluate(i, "--predictions", i.tmp / "[red]results[/].json"), ["[red]results[/].json", "Cannot read"])


@case("eval: --predictions id that is not an exact id")
def _(i):
    f = i.file("results.json", json.dumps([{"question_id": 10010.5, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f), ["(first: 10010.5)", "Check --task and --split"])


@case("eval: output dir holds foreign files, --overwrite")
def _(i):
    i.folder("eval", report__md="mine")
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f, "--overwrite"), ["holds report.md, which pgm did not write"])


@case("eval: output dir in use by another pgm eval")
def _(i):
    i.busy("eval", "eval")
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f), ["is in use: pgm eval (process", "Wait for it"])


@case("eval: output dir read-only")
def _(i):
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    args = evaluate(i, "--predictions", f)
    args[args.index(i.tmp / "eval")] = i.read_only("eval")
    return Case(args, ["--output-dir", "is not writable", "Choose a folder"])


@case("eval: --submission is a folder")
def _(i):
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f, "--submission", i.folder("sub")), ["--submission", "is a folder"])


@case("eval: output dir holds a pgm train run")
def _(i):
    i.previous_run("eval", kind="train", adapter_model__safetensors="w", run_config__json="{}")
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f), ["holds a previous pgm train",
                                                  "--overwrite would replace that pgm train with this eval"])


@case("eval: --submission in a folder inside the output dir")
def _(i):
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f, "--submission", i.tmp / "eval" / "server" / "sub.json"),
                ["--submission", "is in a folder inside --output-dir", "directly in --output-dir"])


@case("eval: output dir holds a previous evaluation")
def _(i):
    i.previous_run("eval", kind="eval", metrics__json="{}", predictions__jsonl="")
    f = i.file("p.json", json.dumps([{"question_id": 10, "answer": "red"}]))
    return Case(evaluate(i, "--predictions", f), ["holds a previous pgm eval", "--overwrite"])


# ----- pgm data synth ---------------------------------------------------------------------------

@case("data synth: unknown task")
def _(i):
    return Case(["data", "synth", "vqav3", i.tmp / "s"], ["Unknown task 'vqav3'", "Supported:"])


@case("data synth: folder not empty")
def _(i):
    i.folder("s", keep__txt="mine")
    return Case(["data", "synth", "vqav2", i.tmp / "s", "-n", "2"], ["holds keep.txt, which pgm did not write"])


@case("data synth: folder not empty, --overwrite")
def _(i):
    i.folder("s", keep__txt="mine")
    return Case(["data", "synth", "vqav2", i.tmp / "s", "-n", "2", "--overwrite"],
                ["holds keep.txt, which pgm did not write", "--overwrite replaces only what pgm wrote"])


@case("data synth: folder is a file")
def _(i):
    return Case(["data", "synth", "vqav2", i.file("s", "a file"), "-n", "2"], ["is a file", "folder path"])


@case("data synth: folder read-only")
def _(i):
    return Case(["data", "synth", "vqav2", i.read_only("s"), "-n", "2"], ["is not writable", "Choose a folder"])


@case("data synth: --num-examples zero")
def _(i):
    return Case(["data", "synth", "vqav2", i.tmp / "s", "-n", "0"], ["--num-examples", "synth -h' for help"], usage=True)


# ----- pgm merge, predict, doctor, memory-estimate ----------------------------------------------

def adapters(i: Inputs) -> list:
    return ["--model", i.tmp / "run-a", "--model", i.tmp / "run-b"]


@case("merge: one model")
def _(i):
    return Case(["merge", "--base-model", "tiny", "--model", i.tmp / "run-a", "-o", i.tmp / "m"],
                ["needs at least two models (got 1)", "--model twice"])


@case("merge: --model missing")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m"],
                ["--model", "run-a does not exist", "adapter folder"])


@case("merge: unknown --mode")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--mode", "fancy"],
                ["--mode 'fancy' is not a merge method", "Supported: linear"])


@case("merge: unknown METHOD")
def _(i):
    return Case(["merge", "fancy", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m"],
                ["METHOD 'fancy' is not a merge method", "Supported: linear"])


@case("merge: METHOD and --mode disagree")
def _(i):
    return Case(["merge", "ties", "--mode", "linear", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m"],
                ["METHOD 'ties' and --mode 'linear' disagree", "Give the method once"])


@case("merge: --density out of range")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--density", "1.5"],
                ["--density must be in (0, 1] (got 1.5)", "pgm merge --help"])


@case("merge: --weight nan")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--weight", "nan", "--weight", "1"],
                ["--weight must be a finite number (got nan)", "pgm merge --help"])


@case("merge: --lambda nan")
def _(i):
    return Case(["merge", "ties", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--lambda", "nan"],
                ["--lambda must be a finite number (got nan)"])


@case("merge: --lambda inf")
def _(i):
    return Case(["merge", "ties", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--lambda", "inf"],
                ["--lambda must be a finite number (got inf)"])


@case("merge: --density nan")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m", "--density", "nan"],
                ["--density must be a finite number (got nan)"])


@case("merge: --output is a file")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.file("merged", "mine"), "--overwrite"],
                ["--output", "merged is a file", "folder path"])


@case("merge: --output holds foreign files, --overwrite")
def _(i):
    out = i.folder("merged", notes__md="mine")
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", out, "--overwrite"],
                ["--output", "holds notes.md, which pgm did not write"])


@case("merge: --output read-only")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.read_only("merged")],
                ["--output", "is not writable", "Choose a folder"])


@case("merge: --output in use by another pgm merge")
def _(i):
    return Case(["merge", "--base-model", "tiny", *adapters(i), "-o", i.busy("merged", "merge")],
                ["--output", "is in use: pgm merge (process", "Wait for it"])


def val_image(i: Inputs) -> Path:
    return sorted((i.data() / "val2014").iterdir())[0]


@case("merge: regmean without one --calibrate per model")
def _(i):
    return Case(["merge", "regmean", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m",
                 "--calibrate", f"vqav2={i.data()}"],
                ["--mode regmean needs one --calibrate TASK=DATA_ROOT per --model", "(got 1 for 2 models)"])


@case("merge: --regmean-alpha out of range")
def _(i):
    return Case(["merge", "regmean", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m",
                 "--calibrate", f"vqav2={i.data()}", "--calibrate", f"vqa={i.data()}", "--regmean-alpha", "1.5"],
                ["unknown task 'vqa'", "--regmean-alpha must be in (0, 1] (got 1.5)"])


@case("merge: --calibrate with another method")
def _(i):
    return Case(["merge", "ties", "--base-model", "tiny", *adapters(i), "-o", i.tmp / "m",
                 "--calibrate", f"vqav2={i.data()}"], ["--calibrate has no effect with --mode ties"])


def study_file(i: Inputs, extra: str = "", grid: str = "[{method: ties, density: [0.3, 0.5]}]",
               data_root: Path | None = None) -> Path:
    i.folder("run-a")
    root = data_root if data_root is not None else i.data()
    return i.file("study.yaml", f"base_model: tiny\nexperts:\n  vqav2: {{path: run-a, data_root: {root}}}\n"
                                f"grid: {grid}\n{extra}")


@case("study: unknown key")
def _(i):
    return Case(["study", study_file(i, "max_samples: 8\n"), "-o", i.tmp / "s"],
                ["study.yaml: unknown key 'max_samples'", "The keys are"])


@case("study: data root missing")
def _(i):
    return Case(["study", study_file(i, data_root=i.tmp / "nodata"), "-o", i.tmp / "s"],
                ["experts.vqav2.data_root", "nodata does not exist", "pgm data layout"])


@case("study: density nan")
def _(i):
    return Case(["study", study_file(i, grid="[{method: ties, density: [0.3, .nan]}]"), "-o", i.tmp / "s"],
                ["grid[0] (ties) density must be finite numbers", "Fix the value"])


@case("study: unknown method")
def _(i):
    return Case(["study", study_file(i, grid="[{method: tsvm}]"), "-o", i.tmp / "s"],
                ["grid[0]: unknown method 'tsvm'", "The methods are"])


@case("study: --max-eval-samples twice")
def _(i):
    return Case(["study", study_file(i), "-o", i.tmp / "s", "--max-eval-samples", "8", "--max-eval-samples", "16"],
                ["--max-eval-samples was given 2 times (8, 16)", "Give --max-eval-samples once"])


@case("study: output holds foreign files")
def _(i):
    i.folder("s", notes__txt="mine")
    return Case(["study", study_file(i), "-o", i.tmp / "s"], ["holds notes.txt, which pgm did not write"])


@case("predict: image missing")
def _(i):
    return Case(["predict", *TINY, val_image(i), i.tmp / "holiday.jpg"],
                ["holiday.jpg is missing (1 of 2 images)", "Check the IMAGE paths"])


@case("predict: corrupt image")
def _(i):
    return Case(["predict", *TINY, i.file("cat.jpg", "not a jpeg")], ["cat.jpg is unreadable", "IMAGE paths"])


@case("predict: --input line not JSON")
def _(i):
    lines = i.file("in.jsonl", json.dumps({"image": str(val_image(i))}) + "\n{image: cat.jpg}\n")
    return Case(["predict", *TINY, "--input", lines], ["--input", "in.jsonl line 2: invalid JSON", "one JSON object"])


@case("predict: --output exists")
def _(i):
    return Case(["predict", *TINY, val_image(i), "-o", i.file("answers.jsonl", "mine\n")],
                ["--output", "answers.jsonl already exists", "--overwrite"])


@case("predict: --output --overwrite of a file pgm did not write")
def _(i):
    return Case(["predict", *TINY, val_image(i), "-o", i.file("answers.jsonl", "mine\n"), "--overwrite"],
                ["--output", "answers.jsonl was not written by pgm", "never overwrites"])


@case("doctor: --timeout nan")
def _(i):
    return Case(["doctor", "--timeout", "nan"], ["--timeout", "doctor -h' for help"], usage=True)


@case("doctor: --timeout inf")
def _(i):
    return Case(["doctor", "--timeout", "inf"], ["--timeout must be a finite number of seconds (got inf)", "--timeout 5"])


@case("doctor: --error file missing")
def _(i):
    return Case(["doctor", "--error", i.tmp / "crash.log"], ["--error", "crash.log", "No such file", "stdin"])


@case("memory-estimate: --gpu-memory not a size")
def _(i):
    return Case(["memory-estimate", "--model-path", "tiny", "--gpu-memory", "lots"],
                ["--gpu-memory 'lots' is not a size", "24GB"])


@case("memory-estimate: --model-path unknown")
def _(i):
    return Case(["memory-estimate", "--model-path", i.tmp / "no-model"], ["--model-path", "no-model", "no preset"])


@case("memory-estimate: --batch-size zero")
def _(i):
    return Case(["memory-estimate", "--model-path", "tiny", "--batch-size", "0"], ["--batch-size must be >= 1 (got 0)", "--help"])


# ----- the check --------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash (files) or 'dir'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_untouched(before: dict[str, str], after: dict[str, str]) -> None:
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or removed: {changed}"
    existing_dirs = {"."} | {p for p, h in before.items() if h == "dir"}
    intruders = [p for p, h in after.items()
                 if p not in before and h != "dir" and str(Path(p).parent) in existing_dirs]
    assert not intruders, f"new files in existing folders: {intruders}"


def run_pgm(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "WANDB_MODE": "offline", "TERM": "dumb"}
    return subprocess.run([sys.executable, "-m", "paligemma_cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def test_the_catalogue_is_large_enough_and_documented():
    assert len(CASES) >= 25
    per_command = Counter(name.split(":")[0] for name in CASES)
    assert set(per_command) == {"train", "eval", "data synth", "merge", "predict", "study", "doctor", "memory-estimate"}
    doc = (Path(__file__).parents[2] / "docs" / "troubleshooting.md").read_text()
    assert f"**{len(CASES)} distinct bad inputs**" in doc
    for command, count in per_command.items():
        assert f"| `pgm {command}` | {count} |" in doc, command


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, synthetic_data):
    inputs = Inputs(tmp_path / "work", synthetic_data)
    inputs.tmp.mkdir()
    try:
        c = CASES[name](inputs)
        shared = inputs.data()
        before, before_shared = snapshot(tmp_path), snapshot(shared)
        result = run_pgm(c.args, cwd=inputs.tmp)
        after, after_shared = snapshot(tmp_path), snapshot(shared)
    finally:
        for undo in inputs.cleanups:
            undo()
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    if c.usage:
        assert result.returncode == 2 and "Try '" in text, text
        for needle in c.needles:
            assert needle in text, f"{needle!r} not in:\n{text}"
    else:
        assert result.returncode == 1, text
        errors = [line for line in text.splitlines() if "Error:" in line]
        assert len(errors) == 1 and text.count("Error:") == 1, text
        for needle in c.needles:
            assert needle in errors[0], f"{needle!r} not in:\n{errors[0]}"
    assert_untouched(before, after)
    assert_untouched(before_shared, after_shared)
