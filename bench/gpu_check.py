"""One prepared GPU check: PaliGemma-3B shapes in 4-bit on CUDA, measured peaks beside `memory-estimate`.

Run:  python bench/gpu_check.py --out DIR [--budget-s 420] [--steps 10] [--rows ID,ID]
      python bench/gpu_check.py --tiny --out DIR          (CPU, tiny shapes: proves the script runs)

Needs no hub and no network. For google/paligemma-3b-pt-224, -448 and paligemma2-3b-pt-448 it builds
a randomly initialised PaliGemma with the real configuration (pgm's shipped presets,
model/presets.py) directly on the GPU in bf16, with the real processor at the real image size and
a tokenizer of the published size (Gemma's 256,000 tokens padded out, + <image>, 1024 <loc>, 128
<seg>: 257,153 in the 257,216-row vocabulary; model/tiny.py `build_from_config`), saves it as
safetensors and loads it back through pgm's own `load_model`, quantised, as a user's run does.
Data: pgm's synthetic scenes rendered at the model's resolution, as a `--train-file` JSONL of
one-word VQA answers, so every batch has the same shape and the estimate describes the very batch
measured. Rows (each fails soft: an error is recorded as its line and the script goes on):

  train:MODEL:QUANT     `train.loop.train()` for --steps steps, batch 4, LoRA r16, gradient
                        checkpointing, AdamW (pgm's defaults; accumulation 1): samples/s and tokens/s
                        after --warmup steps; torch.cuda.max_memory_allocated / reserved over the
                        steps beside `diagnose.memory.estimate` (what `pgm memory-estimate --json`
                        prints) for that batch, in total and per part.
  generate:MODEL:QUANT  `infer.generate.generate_answers` (the `pgm eval` path), examples/s at
                        batch 1 vs 16, 16 new tokens (a random model seldom stops earlier).

Rows run in priority order; a row is skipped (and recorded so) when the time left of --budget-s is
below what it needs. JSON and markdown are rewritten after every row, so a run killed at its time
limit still leaves every finished row. Both go to DIR (gpu_check.json, gpu_check.md); the table is
printed too. Per-part timings (imports, data, each model build, each row's load and steps) are in
both.

On a GPU machine: `make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"`
where the machine has network. Without network (the lent H200s have none), carry wheels: pgm's
training path needs torch (CUDA), transformers >= 5, peft, accelerate, bitsandbytes (its wheel
carries the CUDA 11.8-13.2 kernels), tokenizers, safetensors, sentencepiece, pillow, numpy, pyyaml,
msgspec, matplotlib, psutil, typer, rich (datasets, rapidfuzz, pycocoevalcap and wandb are not imported: the
--tiny run passes with them hidden). The H200 image already has all of them but bitsandbytes and msgspec
(torch 2.11 cu130, transformers 5.17, huggingface_hub 1.33: the run of 2026-12-04 passed with those), so:
  pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 \\
      -d .whl bitsandbytes==0.50.2                      # here, into the git-ignored .whl/ (43 MB)
  pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \\
      -d .whl msgspec==0.23.0
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
      PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT --budget-s 420
(the last line there, carrying .whl, with a command time limit of about --budget-s + 120 s: a run cut
short still leaves the finished rows in $OUT).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from paligemma_cli.events import Events  # noqa: E402  (light: no torch, no transformers)

MODELS = {"pg1-224": "google/paligemma-3b-pt-224", "pg1-448": "google/paligemma-3b-pt-448",
          "pg2-448": "google/paligemma2-3b-pt-448"}
TINY_RES = {224: 32, 448: 64}  # --tiny: the same rows at 16 and 64 image tokens (patch 8)
BATCH, GEN_BATCH, MAX_LENGTH, MAX_NEW_TOKENS = 4, 16, 64, 16
# Seconds a row needs on an H200 (guessed from 3B FLOPs and load times, generous); a model's
# build (draw on the GPU, write ~6 GB of safetensors) is added the first time a row needs it.
BUILD_S = 45


@dataclass(frozen=True)
class Row:
    kind: str  # train | generate
    model: str  # a key of MODELS
    quantization: str
    need_s: int

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.model}:{self.quantization}"


ROWS = [Row("train", "pg1-224", "4bit", 40), Row("train", "pg1-448", "4bit", 50),
        Row("generate", "pg1-448", "4bit", 45), Row("train", "pg2-448", "4bit", 50),
        Row("train", "pg1-448", "none", 40), Row("generate", "pg1-448", "none", 35),
        Row("train", "pg1-448", "8bit", 70)]


def fits_budget(row: Row, seconds_left: float, built: set[str], observed: dict[str, float] | None = None) -> bool:
    """Whether `row` (plus its model's build, if not built yet) fits in the time left. `observed`:
    the longest build / train / generate seen so far in this run, which overrides a lower guess."""
    seen = observed or {}
    build = 0 if row.model in built else max(BUILD_S, seen.get("build", 0))
    return seconds_left >= max(row.need_s, seen.get(row.kind, 0)) + build


def tiny_spec(preset: dict) -> dict:
    """The preset with tiny layer sizes (multiples of 64: bitsandbytes' CPU kernels), same structure."""
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    res = TINY_RES[preset["vision_config"]["image_size"]]
    text = {**preset["text_config"], **small, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 4096}
    vision = {**preset["vision_config"], **small, "patch_size": 8, "image_size": res,
              "num_image_tokens": (res // 8) ** 2}
    return {**preset, "text_config": text, "vision_config": vision, "projection_dim": 64}


def estimate_for(spec: dict, model_id: str, quantization: str, geo: dict):
    """`diagnose.memory.estimate` for the batch measured (its text tokens and answer positions), and
    the `pgm memory-estimate` arguments that print the same numbers for the preset `model_id`."""
    from paligemma_cli.diagnose import memory

    setup = memory.TrainSetup(batch_size=BATCH, max_length=geo["seq_len"] - geo["image_tokens"],
                              quantization=quantization, compute_dtype="bf16", answer_tokens=geo["answer_positions"])
    command = ["memory-estimate", "--model-path", model_id, "--batch-size", str(BATCH), "--max-length",
               str(setup.max_length), "--answer-tokens", str(setup.answer_tokens), "--quantization", quantization,
               "--json"]
    return memory.estimate(spec, setup), command


def compare(est, baseline: int, resident: int, peak: int, reserved: int, device_used: int) -> dict:
    """Measured CUDA memory (bytes; `baseline` allocated before the row) beside the estimate's parts."""
    resident, peak = resident - baseline, peak - baseline
    rows = [("resident before step 1 (weights, fp32 upcast, LoRA)",
             est.weights_quantized + est.weights_unquantized + est.kbit_upcast + est.lora, resident),
            ("step peak above resident (gradients, optimizer, activations)",
             est.gradients + est.optimizer + est.activations, peak - resident),
            ("peak allocated", est.total - est.overhead, peak),
            ("device memory used (nvidia-smi's view) vs total", est.total, device_used)]
    return {"measured": {"baseline_allocated": baseline, "resident": resident, "peak_allocated": peak,
                         "peak_reserved": reserved, "device_used": device_used},
            "compare": [{"part": part, "estimate": e, "measured": m, "ratio": m / e if e else None}
                        for part, e, m in rows]}


class Clock(Events):
    """`Events` for train.loop: step times, losses, and on CUDA the memory around the steps."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.started = None
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.resident = self.peak = self.reserved = self.device_used = None

    def train_start(self, total_steps, start_step, info) -> None:
        self.on_start()

    def train_step(self, step, metrics) -> None:
        self.on_step(metrics)

    def on_start(self) -> None:
        import torch

        if self.cuda:  # model loaded, LoRA attached: what stays resident; the peak counts from here
            torch.cuda.synchronize()
            self.resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def on_step(self, metrics: dict) -> None:
        import torch

        self.steps.append(time.perf_counter())  # the loop reads the loss each step: synchronised
        if "loss" in metrics:
            self.losses.append(float(metrics["loss"]))
        if self.cuda:
            self.peak, self.reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            free, total = torch.cuda.mem_get_info()
            self.device_used = max(self.device_used or 0, total - free)


def _scratch(tiny: bool) -> str | None:
    """RAM-backed /dev/shm when it holds three bf16 3B checkpoints (~18 GB): writing and re-reading
    them is most of a model's build time on a slow or virtualised disk. Else the temp dir."""
    import shutil

    shm = Path("/dev/shm")
    if not tiny and shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 24 * 1024 ** 3:
        return str(shm)
    return None


class Check:
    def __init__(self, args):
        import torch

        self.args, self.torch = args, torch
        self.cuda = torch.cuda.is_available() and not args.tiny
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="pgm-gpu-check-", dir=_scratch(args.tiny)))
        self.dirs: dict[str, Path] = {}
        self.data: dict[int, Path] = {}
        self.timings: dict[str, float] = {}
        self.observed: dict[str, float] = {}  # longest build / train / generate so far (s)

    def spec(self, model: str) -> dict:
        from paligemma_cli.model.presets import preset_config

        preset = preset_config(MODELS[model])
        return tiny_spec(preset) if self.args.tiny else preset

    def model_dir(self, model: str) -> Path:
        """Build the model on first use: drawn on the device in bf16, saved as safetensors."""
        if model not in self.dirs:
            start = time.perf_counter()
            # bf16 on disk for PaliGemma 1 too (the hub ships fp32): half the bytes to write, and
            # load_model casts to the compute dtype either way.
            spec = {**self.spec(model), "torch_dtype": "bfloat16"}
            from paligemma_cli.model.tiny import build_from_config

            self.dirs[model] = build_from_config(spec, self.work / model, device="cuda" if self.cuda else "cpu")
            self._free()
            self.timings[f"build {model}"] = time.perf_counter() - start
            self.observed["build"] = max(self.observed.get("build", 0), self.timings[f"build {model}"])
        return self.dirs[model]

    def train_file(self, model: str) -> Path:
        """JSONL of synthetic scenes at the model's resolution: one colour question, a one-word answer."""
        res = self.spec(model)["vision_config"]["image_size"]
        if res not in self.data:
            from paligemma_cli.data.synthetic import make_scenes, render_scene, save_image

            start = time.perf_counter()
            root = self.work / f"data-{res}"
            lines = []
            for scene in make_scenes(max(self.args.steps * BATCH, 2 * GEN_BATCH)):
                save_image(render_scene(scene, size=res), root / f"{scene.index}.jpg")
                lines.append(json.dumps({"image": f"{scene.index}.jpg", "prefix": "answer en what color is the shape?",
                                         "suffix": scene.color}))
            (root / "train.jsonl").write_text("\n".join(lines) + "\n")
            self.data[res] = root / "train.jsonl"
            self.timings[f"data {res}px"] = time.perf_counter() - start
        return self.data[res]

    def batch_geometry(self, model: str, model_path: str) -> dict:
        """Tokens per row of the batches pgm's collator makes from the data (all the same shape)."""
        from paligemma_cli.config import DataConfig
        from paligemma_cli.tasks.sources import load_examples
        from paligemma_cli.model.batches import TrainCollator, TrainingSet, image_seq_length
        from paligemma_cli.model.loss import answer_positions
        from paligemma_cli.model.load import load_processor
        from paligemma_cli.tasks import get_task

        processor = load_processor(model_path)
        task = get_task("vqav2")
        data = TrainingSet(task, load_examples(task, DataConfig(train_file=self.train_file(model)), "train"), 0)
        collate = TrainCollator(processor, MAX_LENGTH)
        seq = keep = real = rows = 0
        for start in range(0, len(data), BATCH):
            batch = collate([data[i] for i in range(start, min(start + BATCH, len(data)))])
            seq, keep = max(seq, batch["input_ids"].shape[1]), max(keep, answer_positions(batch["labels"]))
            real, rows = real + int(batch["attention_mask"].sum()), rows + batch["input_ids"].shape[0]
        return {"seq_len": seq, "answer_positions": keep, "image_tokens": image_seq_length(processor),
                "tokens_per_example": real / rows}

    def _free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def _baseline(self) -> int:
        self._free()
        return self.torch.cuda.memory_allocated() if self.cuda else 0

    def run_row(self, row: Row) -> dict:
        model_path = str(self.work / "missing-model") if row.id == self.args.break_row else str(self.model_dir(row.model))
        start = time.perf_counter()  # after the build: what a row of this kind takes
        out = self.train_row(row, model_path) if row.kind == "train" else self.generate_row(row, model_path)
        self.observed[row.kind] = max(self.observed.get(row.kind, 0), time.perf_counter() - start)
        return out

    def train_row(self, row: Row, model_path: str) -> dict:
        from paligemma_cli.config import build_run
        from paligemma_cli.train.loop import train

        geo = self.batch_geometry(row.model, model_path)
        run = build_run({"task": "vqav2", "model_path": model_path, "quantization": row.quantization,
                         "train_file": str(self.train_file(row.model)), "batch_size": BATCH,
                         "gradient_accumulation_steps": 1, "max_steps": self.args.steps, "max_length": MAX_LENGTH,
                         "logging_steps": 1, "save_steps": self.args.steps + 1, "lr_scheduler": "constant",
                         "warmup_ratio": 0.0, "output_dir": str(self.work / "runs" / row.id.replace(":", "-")),
                         "overwrite": True})
        est, command = estimate_for(self.spec(row.model), MODELS[row.model], row.quantization, geo)
        baseline = self._baseline()
        clock = Clock(self.cuda)
        start = time.perf_counter()
        result = train(run, clock)
        end = time.perf_counter()
        warm = min(self.args.warmup, len(clock.steps) - 1)
        steady = clock.steps[-1] - clock.steps[warm - 1] if warm > 0 else clock.steps[-1] - clock.started
        samples_per_s = BATCH * (len(clock.steps) - warm) / max(steady, 1e-9)
        out = {"steps": result.global_step, "final_loss": result.final_loss, "losses": clock.losses, **geo,
               "samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * geo["tokens_per_example"],
               "timings": {"load_s": clock.started - start, "first_steps_s": clock.steps[warm - 1] - clock.started
                           if warm > 0 else 0.0, "steady_steps_s": steady, "save_s": end - clock.steps[-1]},
               "estimate": {**est.to_dict(), "allocated": est.total - est.overhead}}
        if not self.args.tiny:  # the same numbers from the CLI (--tiny's shapes have no preset)
            out["estimate_command"] = "pgm " + " ".join(command)
        if self.cuda:
            out.update(compare(est, baseline, clock.resident, clock.peak, clock.reserved, clock.device_used))
        return out

    def generate_row(self, row: Row, model_path: str) -> dict:
        from paligemma_cli.config import DataConfig, ModelConfig
        from paligemma_cli.tasks.sources import load_examples
        from paligemma_cli.infer.generate import generate_answers
        from paligemma_cli.model.load import load_for_inference, load_processor
        from paligemma_cli.tasks import get_task

        start = time.perf_counter()
        processor = load_processor(model_path)
        model = load_for_inference(ModelConfig(model_path=model_path, quantization=row.quantization))
        examples = load_examples(get_task("vqav2"), DataConfig(train_file=self.train_file(row.model)), "train")
        out = {"load_s": time.perf_counter() - start, "max_new_tokens": MAX_NEW_TOKENS, "batches": {}}
        for batch, count in ((1, 2 if self.args.tiny else 8), (GEN_BATCH, 2 * GEN_BATCH)):
            list(generate_answers(model, processor, examples[:batch], max_new_tokens=MAX_NEW_TOKENS, batch_size=batch))
            if self.cuda:
                self.torch.cuda.synchronize()
                self.torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            answers = list(generate_answers(model, processor, examples[:count], max_new_tokens=MAX_NEW_TOKENS,
                                            batch_size=batch))
            seconds = time.perf_counter() - t0
            out["batches"][str(batch)] = {
                "examples": len(answers), "seconds": seconds, "examples_per_s": len(answers) / seconds,
                "peak_allocated": self.torch.cuda.max_memory_allocated() if self.cuda else None}
        b1, b16 = (out["batches"][k]["examples_per_s"] for k in ("1", str(GEN_BATCH)))
        out["speedup"] = b16 / b1
        return out


# --- report ----------------------------------------------------------------------------------

def _size(n) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2)):
        if abs(n) >= 0.1 * scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1024:.1f} KiB"


def _ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check {'(--tiny, CPU) ' if report['tiny'] else ''}on {env['device']}: torch {env['torch']}, "
             f"transformers {env['transformers']}, bitsandbytes {env['bitsandbytes']}; batch {BATCH}, LoRA r16, "
             f"gradient checkpointing, {report['steps']} steps ({report['warmup']} warm-up).", "",
             "| row | status | seconds | throughput | peak allocated (measured / estimate) | ratio "
             "| resident (measured / estimate) | peak reserved | note |",
             "| --- | --- | ---: | --- | --- | ---: | --- | --- | --- |"]
    for r in report["rows"]:
        cells = [r["row"], r["status"], f"{r.get('seconds', 0):.1f}"]
        if r["status"] != "ok":
            cells += ["", "", "", "", "", r.get("error") or r.get("reason", "")]
        elif r["row"].startswith("train"):
            cmp = {c["part"].split(" (")[0]: c for c in r.get("compare", [])}
            peak, res = cmp.get("peak allocated", {}), cmp.get("resident before step 1", {})
            cells += [f"{r['samples_per_s']:.2f} samples/s, {r['tokens_per_s']:.0f} tokens/s",
                      f"{_size(peak.get('measured'))} / {_size(r['estimate']['allocated'])}",
                      _ratio(peak.get("ratio")),
                      f"{_size(res.get('measured'))} / {_size(res.get('estimate'))}",
                      _size(r.get("measured", {}).get("peak_reserved")),
                      f"{r['seq_len']} tokens/row (K={r['answer_positions']}), load {r['timings']['load_s']:.1f} s"]
        else:
            b = r["batches"]
            cells += [f"{b['1']['examples_per_s']:.2f} ex/s at batch 1, {b[str(GEN_BATCH)]['examples_per_s']:.2f} "
                      f"at {GEN_BATCH} ({r['speedup']:.1f}x)", _size(b[str(GEN_BATCH)]["peak_allocated"]), "", "", "",
                      f"{r['max_new_tokens']} new tokens, load {r['load_s']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items())]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> str:
    text = markdown(report)
    for name, body in (("gpu_check.json", json.dumps(report, indent=2, default=str)), ("gpu_check.md", text)):
        tmp = out / (name + ".tmp")
        tmp.write_text(body)
        tmp.replace(out / name)
    return text


def _environment(torch) -> dict:
    import transformers

    try:
        import bitsandbytes
        bnb = bitsandbytes.__version__
    except ImportError:  # every 4/8-bit row then records the load error; bf16 rows still run
        bnb = "missing"
    device = (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 1024 ** 3:.0f} GiB"
              if torch.cuda.is_available() else f"CPU ({platform.machine()}, {os.cpu_count()} cores)")
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bnb, "python": platform.python_version()}


def _error_line(exc: BaseException) -> str:
    from paligemma_cli.errors import PgmError

    if isinstance(exc, PgmError):  # already one line with its fix
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for gpu_check.json and gpu_check.md.")
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes on CPU: checks the script itself runs.")
    parser.add_argument("--steps", type=int, default=10, help="Training steps per train row.")
    parser.add_argument("--warmup", type=int, default=2, help="First steps left out of the throughput.")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="Wall-clock seconds for the whole run; rows that no longer fit are skipped.")
    parser.add_argument("--rows", default=None, help="Comma-separated row ids to run (default: all, in order): "
                        + ", ".join(r.id for r in ROWS))
    parser.add_argument("--break-row", default=None, metavar="ID",
                        help="Give this row a model path that does not exist (tests the fail-soft path).")
    parser.add_argument("--work-dir", default=None, help="Where models and data go (default: a temp dir, removed).")
    args = parser.parse_args(argv)
    known = {r.id: r for r in ROWS}
    wanted = [s.strip() for s in args.rows.split(",")] if args.rows else list(known)
    unknown = [w for w in wanted if w not in known]
    if unknown or args.steps < 1 or args.warmup < 0:
        parser.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(known)}" if unknown
                     else "--steps must be >= 1 and --warmup >= 0")
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from paligemma_cli.cli._ui import quiet_libraries

    quiet_libraries()
    if not args.tiny and not torch.cuda.is_available():
        print("Error: no CUDA device here. Run with --tiny to check the script on CPU.", file=sys.stderr)
        return 1
    environment = _environment(torch)  # imports transformers: before the work dir exists to be left behind
    check = Check(args)
    report = {"command": " ".join(["python", "bench/gpu_check.py"] + (argv if argv is not None else sys.argv[1:])),
              "tiny": args.tiny, "steps": args.steps, "warmup": min(args.warmup, args.steps - 1),
              "budget_s": args.budget_s, "environment": {**environment, "work_dir": str(check.work)},
              "rows": [], "timings": check.timings}
    check.timings["imports"] = time.perf_counter() - t0
    print(json.dumps(report["environment"]), flush=True)  # in the log even if the run is cut short
    try:
        for row_id in wanted:
            row = known[row_id]
            left = args.budget_s - (time.perf_counter() - t0)
            if not fits_budget(row, left, set(check.dirs), check.observed):
                entry = {"row": row.id, "status": "skipped", "reason": f"budget: {left:.0f} s left"}
            else:
                start = time.perf_counter()
                print(f"[{start - t0:6.1f} s] {row.id} ...", flush=True)
                try:
                    entry = {"row": row.id, "status": "ok", **check.run_row(row)}
                except Exception as exc:  # fail soft: record the error line, go on with the next row
                    entry = {"row": row.id, "status": "error", "error": _error_line(exc)}
                check._free()
                entry["seconds"] = time.perf_counter() - start
                check.timings[row.id] = entry["seconds"]
            report["rows"].append(entry)
            check.timings.pop("total", None)  # kept last in the report
            check.timings["total"] = time.perf_counter() - t0
            write_report(args.out, report)
    finally:
        if not args.work_dir:
            import shutil

            shutil.rmtree(check.work, ignore_errors=True)
    check.timings.pop("total", None)
    check.timings["total"] = time.perf_counter() - t0
    print(write_report(args.out, report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
