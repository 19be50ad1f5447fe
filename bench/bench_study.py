"""`pgm study` beside the loop a user would otherwise run (issue #22, "Speed and memory").

Side by side in one run, as whole processes: builds 4 tiny experts (vqav2, gqa, docvqa, coco) with
short QLoRA runs on synthetic data, then times (a) one `pgm study STUDY.yaml` over 8 merges x 4 tasks
(+ base and expert rows) and (b) the same cells as `pgm merge -o DIR` + `pgm eval` per task, one
process each. Prints wall of each side (goal >= 5x), peak RSS of the study process vs one `pgm eval`
(goal <= 1.5x, from os.wait4's ru_maxrss, which includes waited-for children such as
pycocoevalcap's Java; also printed per task) and checks the study's scores equal the loop's metrics.json.

    python bench/bench_study.py [--workdir DIR] [--max-eval-samples N] [--quantization none|4bit] [--keep]
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TASKS = ["vqav2", "gqa", "docvqa", "coco"]
MERGES = [("ties", {"density": 0.3}), ("ties", {"density": 0.5}), ("task_arithmetic", {"lambda": 0.3}),
          ("task_arithmetic", {"lambda": 0.5}), ("dare_ties", {}), ("linear", {}), ("tsv", {}), ("iso_cts", {})]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TERM": "dumb", "COLUMNS": "200"}


def pgm(*args, cwd):
    """Run `python -m paligemma_cli ARGS` as one process; return (wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "paligemma_cli", *map(str, args)], cwd=cwd, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: pgm {' '.join(map(str, args))}\n{out.decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def build_experts(work, steps, examples):
    experts = {}
    for task in TASKS:
        data, run = work / f"data_{task}", work / f"expert_{task}"
        if not (run / "adapter_config.json").exists() and not any(run.rglob("adapter_config.json")):
            pgm("data", "synth", task, data, "--num-examples", examples, cwd=work)
            pgm("train", task, "--model-path", "tiny", "--data-root", data, "--max-steps", steps, "--output-dir", run, cwd=work)
        adapter = next(run.rglob("adapter_config.json")).parent
        experts[task] = (adapter, data)
    return experts


def merge_flags(method, params):
    flags = [method]
    for key, value in params.items():
        flags += [f"--{key}", value]
    return flags


def headline(metrics_json):
    """metrics.json's "metrics" dict; the study's results.csv names which entry is the headline."""
    return json.loads(Path(metrics_json).read_text())["metrics"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--max-eval-samples", type=int, default=8)
    ap.add_argument("--quantization", default="none")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--train-steps", type=int, default=4)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_study_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        experts = build_experts(work, args.train_steps, 16)
        n, q = args.max_eval_samples, args.quantization
        grid = [{"method": m, **p} for m, p in MERGES]
        spec = {"base_model": "tiny", "max_eval_samples": n, "quantization": q,
                "experts": {t: {"path": str(a), "data_root": str(d)} for t, (a, d) in experts.items()}, "grid": grid}
        (work / "STUDY.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        shutil.rmtree(work / "study_out", ignore_errors=True)
        study_wall, study_rss = pgm("study", "STUDY.yaml", "-o", "study_out", "--quantization", q, cwd=work)

        loop_wall, eval_rss, loop_scores, task_rss = 0.0, 0.0, {}, {}
        loop = work / "loop"
        shutil.rmtree(loop, ignore_errors=True)
        loop.mkdir()

        def evaluate(label, task, *model_args):
            nonlocal loop_wall, eval_rss
            out = loop / f"eval_{label}_{task}".replace(" ", "_").replace("=", "")
            w, r = pgm("eval", "--task", task, *model_args, "--data-root", experts[task][1], "--max-eval-samples", n,
                       "--quantization", q, "-o", out, cwd=work)
            loop_wall, eval_rss = loop_wall + w, max(eval_rss, r)
            task_rss[task] = max(task_rss.get(task, 0.0), r)
            loop_scores[label, task] = headline(next(out.rglob("metrics.json")))

        for task in TASKS:
            evaluate("base", task, "--model-path", "tiny")
            for etask, (adapter, _) in experts.items():
                evaluate(f"expert {etask}", task, "--model-path", "tiny", "--adapter", adapter)
        for i, (method, params) in enumerate(MERGES):
            merged = loop / f"merge{i}"
            w, _ = pgm("merge", *merge_flags(method, params), "--base-model", "tiny",
                       *[x for a, _ in experts.values() for x in ("--model", a)], "-o", merged, cwd=work)
            loop_wall += w
            for task in TASKS:
                evaluate(f"merge{i}", task, "--model-path", merged)

        rows = list(csv.DictReader((work / "study_out" / "results.csv").open()))
        mismatches = []
        for row in rows:
            label = row["model"]
            for i, (method, params) in enumerate(MERGES):
                if row["method"] == method and all(str(row.get(k, "")) in (str(v), str(float(v))) for k, v in params.items()):
                    label = f"merge{i}"
            want = (loop_scores.get((label, row["task"])) or {}).get(row["metric"])
            if want is None or float(row["score"]) != want:
                mismatches.append((row["model"], row["task"], row["score"], want))

        print(f"\n| side | wall (s) | peak RSS (MiB) |\n|---|---:|---:|")
        print(f"| pgm study (1 process, {len(rows)} cells) | {study_wall:.1f} | {study_rss:.0f} |")
        print(f"| merge + eval loop ({len(loop_scores)} evals, {len(MERGES)} merges) | {loop_wall:.1f} | {eval_rss:.0f} (one eval) |")
        print(f"\nspeed-up {loop_wall / study_wall:.2f}x (goal >= 5x); "
              f"RSS study / one eval {study_rss / eval_rss:.2f}x (goal <= 1.5x); "
              f"scores equal: {'yes' if not mismatches else f'NO, {len(mismatches)} differ: {mismatches[:5]}'}")
        # wait4's ru_maxrss covers the process's waited-for children too: for COCO that is the Java of
        # pycocoevalcap's tokenizer and METEOR (a 2 GB heap asked), so the largest eval is the COCO one.
        print("peak RSS of one pgm eval per task (MiB, incl. its Java children): "
              + ", ".join(f"{t} {r:.0f}" for t, r in task_rss.items())
              + f"; study / smallest {study_rss / min(task_rss.values()):.2f}x")
        return 1 if mismatches else 0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
