"""Start-up of `pgm train` at real data-set size: launch to first step, per phase, cold and warm.

Run: .venv/bin/python bench/bench_startup.py [--workdir DIR] [--tasks vqav2 gqa] [--keep]

Writes a VQAv2-train-sized official layout (443,757 questions with ten answers each in the official
JSON schema, 82,783 small valid JPEG files) and a GQA-train-balanced-sized questions file (943,000
questions in the official schema, on the same image files through `images/` -> `train2014/`) under
--workdir (deleted afterwards unless --keep), then runs the command a user runs, as a process:

    pgm train TASK --model-path tiny --data-root ROOT --max-steps 1 --output-dir NEW_DIR

cold (no image-check cache in PGM_HOME) and warm (the cache of the cold run present), and once more
with --skip-image-check. Each phase's time is the one pgm prints on its phase lines ("...: summary
(4.2 s)"); "to first line" is launch to pgm's first line (interpreter, imports); "to first step" is
launch to the `step 1` line, stamped by this script as the line arrives. Peak RSS is the process's
(os.wait4). As the side-by-side reference the script times, in the same run, the floor every tool
pays before it can train: a bare `python -c "json.load(...)"` of the same official files, run
right before each pgm run; with --baseline-rev also the pgm of an earlier commit, cold.
The tiny model is built before timing (it stands for the real one; its loading is a phase).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VQA_QUESTIONS, VQA_IMAGES, GQA_QUESTIONS = 443_757, 82_783, 943_000
GOALS = {"cold": 60.0, "warm": 15.0}
PHASE = re.compile(r"^(?P<name>[^:]+?)(?: \(.*\))?: .* \((?P<s>[0-9.]+) s\)$")


def small_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def image_ids(n: int) -> list[int]:
    return [9 + 7 * i for i in range(n)]  # sparse like COCO's ids


def write_vqa(root: Path, n_questions: int, n_images: int) -> None:
    split = "train2014"
    img_dir = root / split
    img_dir.mkdir(parents=True)
    data = small_jpeg()
    ids = image_ids(n_images)
    for i in ids:
        (img_dir / f"COCO_{split}_{i:012d}.jpg").write_bytes(data)
    words = ["red", "two", "yes", "no", "blue", "cat", "table", "3", "white", "tennis"]
    with open(root / f"v2_OpenEnded_mscoco_{split}_questions.json", "w") as q, \
            open(root / f"v2_mscoco_{split}_annotations.json", "w") as a:
        q.write('{"info": {"description": "bench"}, "task_type": "Open-Ended", "data_type": "mscoco", '
                f'"license": {{}}, "data_subtype": "{split}", "questions": [')
        a.write(f'{{"info": {{"description": "bench"}}, "license": {{}}, "data_subtype": "{split}", "annotations": [')
        for k in range(n_questions):
            image_id = ids[k % n_images]
            qid = image_id * 1000 + k // n_images
            answer = words[k % len(words)]
            sep = ", " if k else ""
            q.write(f'{sep}{{"image_id": {image_id}, "question": "What is the color of the thing number {k}?", '
                    f'"question_id": {qid}}}')
            answers = ", ".join(f'{{"answer": "{words[(k + j) % len(words)] if j > 7 else answer}", '
                                f'"answer_confidence": "yes", "answer_id": {j + 1}}}' for j in range(10))
            a.write(f'{sep}{{"question_type": "what is the", "multiple_choice_answer": "{answer}", '
                    f'"answers": [{answers}], "image_id": {image_id}, "answer_type": "other", '
                    f'"question_id": {qid}}}')
        q.write("]}")
        a.write("]}")


def write_gqa(root: Path, vqa_root: Path, n_questions: int, n_images: int) -> None:
    """GQA's balanced questions schema (semantic program, types, groups, entailed, annotations...)."""
    root.mkdir(parents=True)
    (root / "images").symlink_to(vqa_root / "train2014", target_is_directory=True)
    ids = image_ids(n_images)
    with open(root / "train_balanced_questions.json", "w") as fh:
        fh.write("{")
        for k in range(n_questions):
            qid = f"{k:08d}"
            rec = {"semantic": [{"operation": "select", "dependencies": [], "argument": f"table ({k})"},
                                {"operation": "relate", "dependencies": [0], "argument": f"_,on,s ({k + 1})"},
                                {"operation": "query", "dependencies": [1], "argument": "name"}],
                   "entailed": [f"{k + 1:08d}", f"{k + 2:08d}"], "equivalent": [qid],
                   "question": f"What is on the table number {k}?",
                   "imageId": f"COCO_train2014_{ids[k % n_images]:012d}", "isBalanced": True,
                   "groups": {"global": "thing", "local": "14-table_on,s"}, "answer": "cup",
                   "semanticStr": f"select: table ({k})->relate: _,on,s ({k + 1}) [0]->query: name [1]",
                   "annotations": {"answer": {"0": f"{k + 1}"}, "question": {"4": f"{k}"},
                                   "fullAnswer": {"1": f"{k + 1}", "5": f"{k}"}},
                   "types": {"semantic": "rel", "structural": "query", "detailed": "relS"},
                   "fullAnswer": "The cup is on the table."}
            fh.write(("," if k else "") + json.dumps(qid) + ": " + json.dumps(rec))
        fh.write("}")


def run_pgm(args: list[str], env: dict) -> dict:
    """Run pgm (the copy on env's PYTHONPATH, from that folder: `-m` puts the cwd first on sys.path)
    as a process; stamp each stdout line on arrival; collect phase times and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "paligemma_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=env["PYTHONPATH"])
    lines, first_line, first_step, phases = [], None, None, {}
    for line in proc.stdout:
        now = time.perf_counter() - start
        line = line.rstrip()
        lines.append(line)
        if first_line is None and line.strip():
            first_line = now
        if first_step is None and line.startswith("step 1 "):
            first_step = now
        m = PHASE.match(line)
        if m:
            phases[m["name"].split(" (")[0]] = float(m["s"])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    total = time.perf_counter() - start
    if proc.returncode != 0 or first_step is None:
        raise SystemExit("pgm failed:\n" + "\n".join(lines[-30:]))
    return {"first_line": first_line, "first_step": first_step, "total": total, "phases": phases,
            "rss_gib": usage.ru_maxrss / 2**20}


def json_floor(files: list[Path], env: dict) -> dict:
    code = "import json, sys\nfor f in sys.argv[1:]:\n    json.load(open(f))"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, files)], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    return {"seconds": time.perf_counter() - start, "rss_gib": usage.ru_maxrss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "pgm-bench-startup")
    parser.add_argument("--tasks", nargs="+", default=["vqav2", "gqa"], choices=["vqav2", "gqa"])
    parser.add_argument("--keep", action="store_true", help="Keep the written data (and reuse it next time).")
    parser.add_argument("--scale", type=float, default=1.0, help="Fraction of the real sizes (a quick try).")
    parser.add_argument("--baseline-rev", default=None, help="Also run the same command (cold) with the pgm of "
                        "this git commit, e.g. the one before the image check was threaded and cached.")
    args = parser.parse_args()
    n_vqa, n_img, n_gqa = (max(10, int(n * args.scale)) for n in (VQA_QUESTIONS, VQA_IMAGES, GQA_QUESTIONS))

    work = args.workdir
    vqa, gqa, home = work / "vqav2", work / "gqa", work / "pgm_home"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PGM_HOME": str(home),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "200"}
    try:
        t = time.perf_counter()
        if not vqa.exists():
            write_vqa(vqa, n_vqa, n_img)
        if "gqa" in args.tasks and not gqa.exists():
            write_gqa(gqa, vqa, n_gqa, n_img)
        print(f"data written in {time.perf_counter() - t:.0f} s under {work}", flush=True)
        baseline = work / "baseline"
        if args.baseline_rev and not baseline.exists():
            baseline.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline_rev, "paligemma_cli"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        subprocess.run([sys.executable, "-c", "from paligemma_cli.model.tiny import ensure_tiny; ensure_tiny('tiny')"],
                       env=env, check=True, cwd=REPO)
        rows = []
        for task in args.tasks:
            root = vqa if task == "vqav2" else gqa
            files = ([root / "v2_OpenEnded_mscoco_train2014_questions.json", root / "v2_mscoco_train2014_annotations.json"]
                     if task == "vqav2" else [root / "train_balanced_questions.json"])
            (home / "image-check.sqlite").unlink(missing_ok=True)
            runs = [("cold", [], env), ("warm", [], env), ("skip check", ["--skip-image-check"], env)]
            if args.baseline_rev:
                runs.append((f"pgm {args.baseline_rev[:7]} (before)", [], {**env, "PYTHONPATH": str(baseline)}))
            for mode, extra, run_env in runs:
                # The floor right before each run: on a shared machine the load changes by the minute.
                floor = json_floor(files, env)
                out = work / f"out-{task}-{len(rows)}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_pgm(["train", task, "--model-path", "tiny", "--data-root", str(root), "--max-steps", "1",
                             "--batch-size", "2", "--gradient-accumulation-steps", "1",
                             "--output-dir", str(out), *extra], run_env)
                shutil.rmtree(out, ignore_errors=True)
                rows.append((task, mode, r, floor))
                print(f"{task} {mode}: first step at {r['first_step']:.1f} s, phases {r['phases']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    names = ["Reading the", "Starting torch and accelerate", "Checking", "Loading the model"]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}\n")
    before = {task: r["first_step"] for task, mode, r, _ in rows if mode.endswith("(before)")}
    print("| data | run | to first line | reading annotations | torch + accelerate | image check | model "
          "| to first step | goal | before / this | peak RSS | json.load floor | first step / floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    for task, mode, r, floor in rows:
        got = [next((v for k, v in r["phases"].items() if k.startswith(n)), None) for n in names]
        cells = [f"{v:.1f} s" if v is not None else "-" for v in got]
        goal = GOALS.get(mode)
        met = "" if goal is None else (f"≤ {goal:.0f} s " + ("met" if r["first_step"] <= goal else "MISSED"))
        ok &= goal is None or r["first_step"] <= goal or task != "vqav2"
        speedup = f"{before[task] / r['first_step']:.1f}x" if task in before else ""
        print(f"| {task} | {mode} | {r['first_line']:.1f} s | {' | '.join(cells)} | {r['first_step']:.1f} s | {met} "
              f"| {speedup} | {r['rss_gib']:.2f} GiB | {floor['seconds']:.1f} s ({floor['rss_gib']:.2f} GiB) "
              f"| {r['first_step'] / floor['seconds']:.1f}x |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
