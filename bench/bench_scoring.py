"""`pgm eval --predictions` at each data set's real size, next to the official scripts' own loop.

Run: .venv/bin/python bench/bench_scoring.py [--tasks vqav2 gqa docvqa coco train] [--tmp DIR]
     [--before CHECKOUT] [--repeat N]

Writes synthetic files in the official formats at the real sizes to a temp dir (removed after):
VQAv2 val2014 (214,354 questions, 10 answers each), GQA val (132,062 balanced questions, 2.0 M in
val_all_questions.json with programs, annotations and entailed ids, choices for all; a results
file for all of them, as the official evaluation requires), DocVQA val (5,349), COCO val2017
(5,000 images, 25,014 captions). Each runs as a whole process: `python -m paligemma_cli eval
--predictions ...` and, side by side, a process doing what the official script does (json.load of
every file, then its loop: vqaEval.py and the RRC ANLS script as ported in bench/official_ports.py,
eval.py with consistency for GQA, COCOEvalCap's steps for COCO). Prints wall time, peak RSS
(os.wait4) and their ratios; checks both give the same headline metric. `--before CHECKOUT` adds the
same `pgm eval` with another checkout's paligemma_cli; `--repeat N` runs both N times, alternately,
and reports the median (the fair before/after comparison on a shared machine).
`train` times the training-path loaders (`task.load_official`) on VQAv2 train2014 (443,757
questions), GQA train balanced (943,000) and COCO train2017 (591,753 captions), next to a bare
`json.load` of the same files. `readers` times each JSON reader on the VQAv2 val annotations (orjson
too when it is installed; it is not a dependency). Data generation is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The children measured import paligemma_cli from the checkout they are given (--before), not this one.
sys.path.insert(0, os.environ.get("PGM_BENCH_CODE", str(REPO)))
sys.path.insert(0, str(REPO / "bench"))

import msgspec  # noqa: E402

SIZES = {"vqav2": 214_354, "gqa": (132_062, 2_011_853), "docvqa": 5_349, "coco": (5_000, 25_014),
         "vqav2-train": 443_757, "gqa-train": 943_000, "coco-train": (118_287, 591_753)}
GOALS = {"vqav2": (5.0, None), "gqa": (15.0, 4.0)}  # seconds, GB (issue #10)
ENC = msgspec.json.Encoder()


class Writer:
    """Streams one big JSON container: the official files are far too big to build as one object."""

    def __init__(self, path: Path, head: str, tail: str):
        self.fh, self.tail, self.first = open(path, "wb"), tail, True
        self.fh.write(head.encode())

    def item(self, value, key: str | None = None) -> None:
        self.fh.write((b"" if self.first else b", ") + (ENC.encode(key) + b": " if key is not None else b"")
                      + ENC.encode(value))
        self.first = False

    def close(self) -> None:
        self.fh.write(self.tail.encode())
        self.fh.close()


# ----- data in the official formats ---------------------------------------------------------------

# VQAv2 has 65 question types (the first words of the question: "what color is the", "how many", ...).
QUESTION_TYPES = [f"what type {k} is the" for k in range(65)]


def write_vqav2(root: Path, split: str, n: int, rng: random.Random) -> Path:
    # Imported here: bench_metrics puts this checkout first on sys.path, which the --load children
    # of another checkout (--before) must not get.
    from bench_metrics import _variant, _vqa_vocabulary, _zipf

    vocab = _vqa_vocabulary(rng)
    info = '{"info": {"description": "synthetic VQAv2"}, "license": {}, "data_subtype": "%s", ' % split
    questions = Writer(root / f"v2_OpenEnded_mscoco_{split}_questions.json",
                       info + '"task_type": "Open-Ended", "data_type": "mscoco", "questions": [', "]}")
    annotations = Writer(root / f"v2_mscoco_{split}_annotations.json", info + '"annotations": [', "]}")
    results = Writer(root / "results.json", "[", "]")
    for i in range(n):
        image_id, qid = 100 + i // 5, (100 + i // 5) * 1000 + i % 5
        answer_type = rng.choices(["yes/no", "number", "other"], weights=[38, 12, 50])[0]
        main = _zipf(rng, vocab[answer_type])
        answers = [main] * 10 if rng.random() < 0.4 else [
            main if rng.random() < rng.uniform(0.3, 0.9) else _zipf(rng, vocab[answer_type]) for _ in range(10)]
        r = rng.random()
        prediction = main if r < 0.6 else _variant(rng, main) if r < 0.75 else _zipf(rng, vocab[answer_type])
        questions.item({"image_id": image_id, "question": f"What is the {main} thing number {i} doing here?",
                        "question_id": qid})
        annotations.item({"question_type": QUESTION_TYPES[i % len(QUESTION_TYPES)], "multiple_choice_answer": main,
                          "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                      for j, a in enumerate(answers)],
                          "image_id": image_id, "answer_type": answer_type, "question_id": qid})
        results.item({"question_id": qid, "answer": prediction})
    for w in (questions, annotations, results):
        w.close()
    return root / "results.json"


GQA_ANSWERS = ["yes", "no", "left", "right", "white", "black", "red", "blue", "man", "woman", "table", "chair",
               "wood", "metal", "dog", "cat", "car", "tree", "grass", "sky", "shirt", "water", "plate", "pizza"]


def _gqa_question(rng: random.Random, qid: str, image: str, group: list[str], balanced: bool) -> dict:
    answer = rng.choice(GQA_ANSWERS)
    structural = rng.choice(["query", "verify", "logical", "choose", "compare"])
    semantic = rng.choice(["rel", "attr", "obj", "cat", "global"])
    return {"semantic": [{"operation": "select", "dependencies": [], "argument": f"{answer} ({rng.randrange(99)})"},
                         {"operation": "relate", "dependencies": [0], "argument": "_,on,s (12)"},
                         {"operation": "query", "dependencies": [1], "argument": "name"}],
            "entailed": rng.sample(group, min(len(group), rng.randint(0, 4))),
            "equivalent": [qid], "question": f"What is on the {answer} that is near question {qid}?",
            "imageId": image, "isBalanced": balanced,
            "groups": {"global": rng.choice([None, answer, "color", "place"]), "local": f"13-{answer}_on,s"},
            "answer": answer, "semanticStr": f"select: {answer} (5)->relate: _,on,s (12) [0]->query: name [1]",
            "annotations": {"answer": {"0": "7"}, "question": {"4": "5"}, "fullAnswer": {"1": "7", "4": "5"}},
            "types": {"detailed": f"{semantic}{structural.capitalize()}", "semantic": semantic,
                      "structural": structural},
            "fullAnswer": f"The {answer} is on the table."}


def write_gqa(root: Path, split: str, n_balanced: int, n_all: int, rng: random.Random,
              results: bool = True) -> Path:
    all_q = Writer(root / f"{split}_all_questions.json", "{", "}") if n_all else None
    balanced = Writer(root / f"{split}_balanced_questions.json", "{", "}")
    choices = Writer(root / f"{split}_choices.json", "{", "}") if n_all else None
    preds = Writer(root / "results.json", "[", "]") if results else None
    every = max(1, n_all // n_balanced) if n_all else 1
    for i in range(max(n_all, n_balanced)):
        qid, image = str(20_000_000 + i), f"n{i // 10}"
        group = [str(20_000_000 + j) for j in range(i - i % 10, min(i - i % 10 + 10, max(n_all, n_balanced)))
                 if j != i]
        is_balanced = i % every == 0 and i // every < n_balanced
        q = _gqa_question(rng, qid, image, group, is_balanced)
        if all_q:
            all_q.item(q, qid)
            valid = [q["answer"], *rng.sample(GQA_ANSWERS, 2)]
            choices.item({"valid": valid, "plausible": valid + rng.sample(GQA_ANSWERS, 5)}, qid)
        if is_balanced or not n_all:
            balanced.item(q, qid)
        if preds:
            preds.item({"questionId": qid, "prediction": q["answer"] if rng.random() < 0.6 else rng.choice(GQA_ANSWERS)})
    for w in (all_q, balanced, choices, preds):
        if w:
            w.close()
    return root / "results.json"


def write_docvqa(root: Path, n: int, rng: random.Random) -> Path:
    (root / "val").mkdir(parents=True, exist_ok=True)
    data, results = [], []
    for i in range(n):
        answers = [" ".join(rng.choice(GQA_ANSWERS) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        data.append({"questionId": 50_000 + i, "question": f"what is the total in field {i}?",
                     "question_types": ["form"], "image": f"documents/doc{i // 3:05d}_1.png", "docId": i // 3,
                     "ucsf_document_id": f"doc{i // 3:05d}", "ucsf_document_page_no": "1", "answers": answers,
                     "data_split": "val"})
        r = rng.random()
        pred = answers[0] if r < 0.5 else answers[0][:-2] + "xx" if r < 0.8 else rng.choice(GQA_ANSWERS)
        results.append({"questionId": 50_000 + i, "answer": pred})
    (root / "val" / "val_v1.0.json").write_bytes(ENC.encode({"dataset_name": "docvqa", "dataset_split": "val",
                                                             "dataset_version": "1.0", "data": data}))
    (root / "results.json").write_bytes(ENC.encode(results))
    return root / "results.json"


def write_coco(root: Path, split: str, n_images: int, n_captions: int, rng: random.Random,
               results: bool = True) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    words = GQA_ANSWERS + ["a", "the", "on", "with", "near", "sitting", "standing", "large", "small", "of"]
    images = [{"license": 3, "file_name": f"{i + 1:012d}.jpg", "coco_url": f"http://images/{i + 1:012d}.jpg",
               "height": 480, "width": 640, "date_captured": "2013-11-14 17:02:52", "flickr_url": "http://x",
               "id": i + 1} for i in range(n_images)]
    caption = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(8, 14))).capitalize() + "."  # noqa: E731
    anns = [{"image_id": i % n_images + 1, "id": i + 1, "caption": caption()} for i in range(n_captions)]
    (root / "annotations" / f"captions_{split}.json").write_bytes(ENC.encode({
        "info": {"description": "synthetic COCO"}, "licenses": [], "images": images, "annotations": anns}))
    if results:
        (root / "results.json").write_bytes(ENC.encode([{"image_id": im["id"], "caption": caption()} for im in images]))
    return root / "results.json"


# ----- the official scripts' loops (each run as its own process) ----------------------------------

def official_vqav2(root: Path, split: str, results: Path) -> dict:
    """vqa.py + vqaEval.py: json.load of all three files, index by question id, the script's loop (ported)."""
    from official_ports import vqa_eval

    questions = json.load(open(root / f"v2_OpenEnded_mscoco_{split}_questions.json"))
    annotations = json.load(open(root / f"v2_mscoco_{split}_annotations.json"))
    qqa = {q["question_id"]: q for q in questions["questions"]}
    res = {r["question_id"]: r["answer"] for r in json.load(open(results))}
    assert set(res) == set(qqa), "Results do not correspond to current VQA set."
    result = vqa_eval(annotations["annotations"], res)
    return {"accuracy": 100 * float(sum(result["acc_qa"])) / len(result["acc_qa"])}


def official_gqa(root: Path, split: str, results: Path) -> dict:
    """eval.py --consistency: every file json.load-ed, the loop over all questions as written there."""
    questions = json.load(open(root / f"{split}_all_questions.json"))
    choices = json.load(open(root / f"{split}_choices.json"))
    predictions = {p["questionId"]: p["prediction"] for p in json.load(open(results))}
    accuracy, consistency, validity = [], [], []
    for qid, question in questions.items():
        if question["isBalanced"]:
            gold, predicted = question["answer"], predictions[qid]
            correct = predicted == gold
            accuracy.append(1.0 if correct else 0.0)
            valid = choices[qid]["valid"] if "Common" not in question["types"]["detailed"] else ["color", "material", "shape"]
            validity.append(1.0 if predicted in valid else 0.0)
            inferred = [eid for eid in question["entailed"] if eid != qid]
            if correct and inferred:
                scores = [1.0 if predictions[eid] == questions[eid]["answer"] else 0.0 for eid in inferred]
                consistency.append(sum(scores) / len(scores))
    avg = lambda xs: 100 * sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {"accuracy": avg(accuracy), "consistency": avg(consistency), "validity": avg(validity)}


def official_docvqa(root: Path, split: str, results: Path) -> dict:
    """The RRC script's evaluate_method (ported, its textbook Levenshtein included) over json.load-ed files."""
    from official_ports import rrc_evaluate

    gt = json.load(open(root / split / f"{split}_v1.0.json"))
    return {"anls": rrc_evaluate(gt, json.load(open(results)))["result"]["score"]}


def official_coco(root: Path, split: str, results: Path) -> dict:
    """COCOEvalCap.evaluate's steps (gts/res per image, PTB tokenizer, each scorer), each timed."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = json.load(open(root / "annotations" / f"captions_{split}.json"))
    gts: dict = {}
    for ann in data["annotations"]:
        gts.setdefault(ann["image_id"], []).append({"caption": ann["caption"]})
    res = {r["image_id"]: [{"caption": r["caption"]}] for r in json.load(open(results))}
    times, out = {}, {}
    start = time.perf_counter()
    tok = PTBTokenizer()
    gts, res = tok.tokenize(gts), tok.tokenize(res)
    times["PTB tokenizer (Java)"] = time.perf_counter() - start
    for scorer, names in ((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]),
                          (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
        start = time.perf_counter()
        score, _ = scorer.compute_score(gts, res)
        times[names[0] if len(names) == 1 else "Bleu"] = time.perf_counter() - start
        out.update(zip(names, score if isinstance(score, list) else [score]))
    out["_times"] = times
    return out


OFFICIAL = {"vqav2": official_vqav2, "gqa": official_gqa, "docvqa": official_docvqa, "coco": official_coco}
SPLITS = {"vqav2": "val2014", "gqa": "val", "docvqa": "val", "coco": "val2017"}
HEADLINE = {"vqav2": "accuracy", "gqa": "accuracy", "docvqa": "anls", "coco": "CIDEr"}


# ----- measuring processes --------------------------------------------------------------------------

def measured(cmd: list[str], code: Path = REPO) -> tuple[float, float, str]:
    """Run `cmd` with `code`'s paligemma_cli, returning wall time, its own peak RSS (GB) and stdout."""
    env = {**os.environ, "PYTHONPATH": str(code), "PGM_BENCH_CODE": str(code), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True, cwd=tempfile.gettempdir())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd[:8]))} ... failed:\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024 ** 2, out.read()


def pgm_eval(task: str, root: Path, split: str, results: Path, out: Path, code: Path = REPO) -> tuple[float, float, dict]:
    wall, rss, _ = measured([sys.executable, "-m", "paligemma_cli", "eval", "--task", task, "--predictions",
                             str(results), "--data-root", str(root), "--split", split, "-o", str(out), "--overwrite"],
                            code)
    return wall, rss, json.loads((out / "metrics.json").read_text())["metrics"]


def timed_pgm_evals(task: str, root: Path, split: str, results: Path, tmp: Path, before: Path | None,
                    repeat: int) -> dict[str, tuple[float, float, dict]]:
    """{"this"[, "before"]: (median wall, peak RSS, metrics)} of `repeat` runs of each, alternating.

    Alternating the two checkouts' runs spreads a shared machine's changing load over both.
    """
    runs: dict[str, list] = {"this": [], "before": []}
    for _ in range(repeat):
        runs["this"].append(pgm_eval(task, root, split, results, tmp / f"{task}-out"))
        if before is not None:
            runs["before"].append(pgm_eval(task, root, split, results, tmp / f"{task}-before", before))
    return {name: (statistics.median(r[0] for r in got), max(r[1] for r in got), got[-1][2])
            for name, got in runs.items() if got}


def score_rows(task: str, tmp: Path, rng: random.Random, before: Path | None, repeat: int = 1) -> list[tuple]:
    root = tmp / task
    root.mkdir(parents=True, exist_ok=True)
    split = SPLITS[task]
    if task == "vqav2":
        results = write_vqav2(root, split, SIZES["vqav2"], rng)
        size = f"{SIZES['vqav2']:,} questions"
    elif task == "gqa":
        results = write_gqa(root, split, *SIZES["gqa"], rng)
        size = f"{SIZES['gqa'][0]:,} balanced / {SIZES['gqa'][1]:,} all questions"
    elif task == "docvqa":
        results = write_docvqa(root, SIZES["docvqa"], rng)
        size = f"{SIZES['docvqa']:,} questions"
    else:
        results = write_coco(root, split, *SIZES["coco"], rng)
        size = f"{SIZES['coco'][0]:,} images, {SIZES['coco'][1]:,} captions"
    mb = sum(p.stat().st_size for p in root.rglob("*.json")) / 1e6
    timed = timed_pgm_evals(task, root, split, results, tmp, before, repeat)
    wall, rss, metrics = timed["this"]
    o_wall, o_rss, o_out = measured([sys.executable, __file__, "--official", task, str(root), split, str(results)])
    official = json.loads(o_out.strip().splitlines()[-1])  # pycocoevalcap prints on stdout too
    key = HEADLINE[task]
    same = abs(official[key] - metrics[key]) < 1e-9 * max(1.0, abs(metrics[key]))
    if task == "gqa":
        same = same and abs(official["consistency"] - metrics["consistency"]) < 1e-9
    of = f", median of {repeat}" if repeat > 1 else ""
    rows = [(task, size, f"{mb:,.0f}", f"pgm eval --predictions{of}", wall, rss, o_wall / wall, o_rss / rss,
             f"{metrics[key]:.4f}", same)]
    rows.append((task, size, f"{mb:,.0f}", "official loop", o_wall, o_rss, 1.0, 1.0, f"{official[key]:.4f}", same))
    if before is not None:  # the same command with an earlier checkout's paligemma_cli
        b_wall, b_rss, b_metrics = timed["before"]
        b_same = abs(b_metrics[key] - metrics[key]) < 1e-9 * max(1.0, abs(metrics[key]))
        rows.append((task, size, f"{mb:,.0f}", f"pgm eval --predictions, before ({before.name}){of}", b_wall, b_rss,
                     o_wall / b_wall, o_rss / b_rss, f"{b_metrics[key]:.4f}", b_same))
    if task == "coco":
        rows.append(("", "", "", "official steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in official["_times"].items()),
                     None, None, None, None, "", ""))
    shutil.rmtree(root)
    return rows


# ----- training-path loaders ------------------------------------------------------------------------

def load_in_process(task: str, root: str, split: str, how: str) -> None:
    """Child process: load one split with pgm's loader or bare json.load; print seconds and count."""
    start = time.perf_counter()
    if how == "pgm":
        from paligemma_cli.tasks import get_task

        n = len(get_task(task).load_official(Path(root), split))
    else:
        n = sum(len(json.load(open(p))) for p in sorted(Path(root).rglob("*.json")))
    print(json.dumps({"seconds": time.perf_counter() - start, "n": n}))


def train_rows(tmp: Path, rng: random.Random, before: Path | None) -> list[tuple]:
    rows = []
    for name, task, split, write in (
            ("vqav2-train", "vqav2", "train2014", lambda r: write_vqav2(r, "train2014", SIZES["vqav2-train"], rng)),
            ("gqa-train", "gqa", "train", lambda r: write_gqa(r, "train", SIZES["gqa-train"], 0, rng, results=False)),
            ("coco-train", "coco", "train2017",
             lambda r: write_coco(r, "train2017", *SIZES["coco-train"], rng, results=False))):
        root = tmp / name
        root.mkdir(parents=True)
        write(root)
        (root / "results.json").unlink(missing_ok=True)
        mb = sum(p.stat().st_size for p in root.rglob("*.json")) / 1e6
        got = {}
        for how, code in (("pgm", REPO), ("json.load", REPO), ("before", before)):
            if code is not None:
                wall, rss, out = measured([sys.executable, __file__, "--load", task, str(root), split,
                                           "json.load" if how == "json.load" else "pgm"], code)
                got[how] = (wall, rss, json.loads(out))
        pw, prss, p = got["pgm"]
        for how in ("json.load", "before"):
            if how in got:
                w, rss, other = got[how]
                rows.append((name, f"{p['n']:,}", f"{mb:,.0f}", p["seconds"], prss, how if how == "json.load"
                             else f"pgm before ({before.name})", other["seconds"], rss,
                             other["seconds"] / p["seconds"], rss / prss))
        shutil.rmtree(root)
    return rows


def reader_rows(tmp: Path, rng: random.Random) -> list[tuple[str, float]]:
    """Seconds to read the VQAv2 val annotations with each JSON reader, in this process, one after another."""
    import gc
    import importlib.util

    from paligemma_cli.tasks.vqav2 import _Annotations

    root = tmp / "readers"
    root.mkdir()
    write_vqav2(root, "val2014", SIZES["vqav2"], rng)
    data = (root / "v2_mscoco_val2014_annotations.json").read_bytes()
    readers = [("json.loads (stdlib)", lambda: json.loads(data)),
               ("json.loads, garbage collector paused", lambda: json.loads(data)),
               ("msgspec.json.decode, untyped", lambda: msgspec.json.decode(data)),
               ("msgspec.json.decode into pgm's structs (what pgm does)",
                lambda: msgspec.json.decode(data, type=_Annotations))]
    if importlib.util.find_spec("orjson"):  # not a pgm dependency: measured when installed
        import orjson

        readers.insert(2, ("orjson.loads", lambda: orjson.loads(data)))
    rows = []
    for name, read in readers:
        if "paused" in name or "pgm" in name:
            gc.disable()
        start = time.perf_counter()
        read()
        rows.append((name, time.perf_counter() - start))
        gc.enable()
    shutil.rmtree(root)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["vqav2", "gqa", "docvqa", "coco", "train", "readers"],
                        choices=["vqav2", "gqa", "docvqa", "coco", "train", "readers"])
    parser.add_argument("--tmp", type=Path, default=None, help="Where the synthetic files go (removed after).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--before", type=Path, default=None,
                        help="Also run pgm from this earlier checkout (its paligemma_cli) on the same files.")
    parser.add_argument("--repeat", type=int, default=1, help="Run pgm eval (and --before's) this many times, "
                        "alternately, and report the median time (the official loop runs once).")
    parser.add_argument("--scale", type=float, default=1.0, help="Shrink every size (a quick check; not the real sizes).")
    parser.add_argument("--official", nargs=4, metavar=("TASK", "ROOT", "SPLIT", "RESULTS"), help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=4, metavar=("TASK", "ROOT", "SPLIT", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.official:
        task, root, split, results = args.official
        print(json.dumps(OFFICIAL[task](Path(root), split, Path(results))))
        return 0
    if args.load:
        load_in_process(*args.load)
        return 0

    rng = random.Random(args.seed)
    for key, size in SIZES.items():
        SIZES[key] = tuple(int(x * args.scale) for x in size) if isinstance(size, tuple) else int(size * args.scale)
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scoring_", dir=args.tmp))
    ok = True
    try:
        print(f"python {platform.python_version()}, {os.cpu_count()} CPU cores, seed {args.seed}, "
              f"load average {os.getloadavg()[0]:.1f}\n")
        scored = [t for t in args.tasks if t not in ("train", "readers")]
        if scored:
            print("| task | size | JSON MB | process | seconds | peak RSS GB | official loop ÷ this, time "
                  "| official loop ÷ this, RSS | headline | same metric |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for task in scored:
            for row in score_rows(task, tmp, rng, args.before, args.repeat):
                name, size, mb, what, wall, rss, tr, rr, headline, same = row
                if wall is None:
                    print(f"| {name} | | | {what} | | | | | | |", flush=True)
                    continue
                print(f"| {name} | {size} | {mb} | {what} | {wall:.2f} | {rss:.2f} | {tr:.1f}x | {rr:.1f}x "
                      f"| {headline} | {'yes' if same else 'NO'} |", flush=True)
                ok = ok and same
                goal = GOALS.get(task)
                if goal and what.startswith("pgm eval --predictions") and "before" not in what:
                    met = wall <= goal[0] and (goal[1] is None or rss <= goal[1])
                    ok = ok and met
                    print(f"|  | goal ≤ {goal[0]:.0f} s" + (f", ≤ {goal[1]:.0f} GB" if goal[1] else "")
                          + f": {'met' if met else 'MISSED'} | | | | | | | | |", flush=True)
        if "train" in args.tasks:
            print("\nTraining-path loading (`task.load_official`, in a fresh process) vs a bare json.load:\n")
            print("| split | examples | JSON MB | pgm load s | pgm peak RSS GB | compared with | its load s "
                  "| its peak RSS GB | it ÷ pgm, time | it ÷ pgm, RSS |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for name, n, mb, ps, prss, other, js, jrss, tr, rr in train_rows(tmp, rng, args.before):
                print(f"| {name} | {n} | {mb} | {ps:.2f} | {prss:.2f} | {other} | {js:.2f} | {jrss:.2f} "
                      f"| {tr:.1f}x | {rr:.1f}x |", flush=True)
        if "readers" in args.tasks:
            print(f"\nReading the VQAv2 val annotations ({SIZES['vqav2']:,} questions) in one process:\n")
            print("| reader | seconds | vs json.loads |")
            print("| --- | --- | --- |")
            rows = reader_rows(tmp, rng)
            for name, seconds in rows:
                print(f"| {name} | {seconds:.2f} | {rows[0][1] / seconds:.1f}x |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
