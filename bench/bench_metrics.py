"""Throughput of the pure-Python metrics on synthetic data of realistic size.

Run: .venv/bin/python bench/bench_metrics.py [--seed 0]

VQA: 214,354 questions (the VQAv2 val size), 10 answers each, drawn Zipf-like from a few
thousand answer strings with VQAv2's rough mix (about half with unanimous annotators; answers and
predictions with punctuation, capitals, articles, number words), timed from a cold
normalisation cache, next to the official loop written out literally (same result, checked).
ANLS: 50,000 prediction / answer-list pairs (1-3 answers, OCR-like typos).
Data generation is not timed. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import string
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from paligemma_cli.metrics.anls import anls  # noqa: E402
from paligemma_cli.metrics.vqa import normalize_answer, vqa_accuracy  # noqa: E402

VQA_QUESTIONS = 214_354
ANLS_PAIRS = 50_000
VQA_BUDGET_S = 5.0


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))


def _vqa_vocabulary(rng: random.Random) -> dict[str, list[str]]:
    numbers = [str(i) for i in range(30)] + ["one", "two", "three", "1,000", "2.5", "10:30"]
    other = ["red", "white", "t-shirt", "the dog", "a cat", "don't know", "tennis racket", "frisbee", "left, right"]
    other += [" ".join(_word(rng) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    return {"yes/no": ["yes", "no"], "number": numbers, "other": other}


def _zipf(rng: random.Random, items: list[str]) -> str:
    # Heavy-tailed like VQA answers: a few strings dominate, thousands occur rarely.
    return items[min(int(rng.paretovariate(1.1)) - 1, len(items) - 1)]


def _variant(rng: random.Random, answer: str) -> str:
    # What a generator emits for a right answer: trailing period, capitals, an article.
    return rng.choice([answer + ".", answer.capitalize(), "the " + answer, answer + "\n", answer.upper()])


def make_vqa(rng: random.Random, n: int) -> tuple[dict, dict]:
    vocab = _vqa_vocabulary(rng)
    references, predictions = {}, {}
    for qid in range(n):
        answer_type = rng.choices(["yes/no", "number", "other"], weights=[38, 12, 50])[0]
        items = vocab[answer_type]
        main = _zipf(rng, items)
        if rng.random() < 0.4:
            answers = [main] * 10
        else:
            agreement = rng.uniform(0.3, 0.9)
            answers = [main if rng.random() < agreement else _zipf(rng, items) for _ in range(10)]
            if rng.random() < 0.1:
                answers[rng.randrange(10)] = _variant(rng, main)  # an annotator's stray punctuation
        r = rng.random()
        prediction = main if r < 0.6 else _variant(rng, main) if r < 0.75 else _zipf(rng, items)
        references[qid * 10 + 7] = {"answers": answers, "answer_type": answer_type}
        predictions[qid * 10 + 7] = prediction
    return predictions, references


def literal_vqa_accuracy(predictions: dict, references: dict) -> float:
    """The official loop written out plainly: no cache, no short-cuts. The speed baseline."""
    total = 0.0
    for qid, ref in references.items():
        gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in ref["answers"]]
        pred = predictions[qid].replace("\n", " ").replace("\t", " ").strip()
        if len(set(gts)) > 1:
            gts = [normalize_answer(a) for a in gts]
            pred = normalize_answer(pred)
        accs = [min(1, sum(o == pred for o in gts[:i] + gts[i + 1:]) / 3) for i in range(len(gts))]
        total += sum(accs) / len(accs)
    return 100 * total / len(references)


def _typo(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(0, max(1, len(chars) // 4))):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice(string.ascii_letters + " ")
    return "".join(chars)


def make_anls(rng: random.Random, n: int) -> tuple[dict, dict]:
    references, predictions = {}, {}
    for qid in range(n):
        answers = [" ".join(_word(rng) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        r = rng.random()
        prediction = answers[0] if r < 0.4 else _typo(rng, answers[0]) if r < 0.8 else _word(rng)
        references[f"d{qid}"] = answers
        predictions[f"d{qid}"] = prediction
    return predictions, references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    vqa_pred, vqa_refs = make_vqa(rng, VQA_QUESTIONS)
    start = time.perf_counter()
    vqa_result = vqa_accuracy(vqa_pred, vqa_refs)
    vqa_s = time.perf_counter() - start

    start = time.perf_counter()
    literal = literal_vqa_accuracy(vqa_pred, vqa_refs)
    literal_s = time.perf_counter() - start
    if abs(literal - vqa_result["accuracy"]) > 1e-9:
        raise SystemExit(f"vqa_accuracy {vqa_result['accuracy']} != literal loop {literal}")

    anls_pred, anls_refs = make_anls(rng, ANLS_PAIRS)
    start = time.perf_counter()
    anls_result = anls(anls_pred, anls_refs)
    anls_s = time.perf_counter() - start

    unanimous = sum(len(set(r["answers"])) == 1 for r in vqa_refs.values()) / len(vqa_refs)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPU cores, seed {args.seed}")
    print(f"VQA: {len(vqa_refs):,} questions, {unanimous:.0%} unanimous; ANLS: {len(anls_refs):,} pairs\n")
    print("| metric | items | seconds | items/s | result | vs literal loop |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| VQA accuracy (`vqa_accuracy`) | {len(vqa_refs):,} questions | {vqa_s:.2f} "
          f"| {len(vqa_refs) / vqa_s:,.0f} | {vqa_result['accuracy']:.2f} | {literal_s / vqa_s:.1f}x faster |")
    print(f"| VQA accuracy (literal official loop) | {len(vqa_refs):,} questions | {literal_s:.2f} "
          f"| {len(vqa_refs) / literal_s:,.0f} | {literal:.2f} | 1.0x |")
    print(f"| ANLS (`anls`) | {len(anls_refs):,} pairs | {anls_s:.2f} | {len(anls_refs) / anls_s:,.0f} "
          f"| {anls_result['anls']:.4f} | |")
    verdict = "ok" if vqa_s <= VQA_BUDGET_S else "MISSED"
    print(f"\nVQA budget ({VQA_BUDGET_S:.0f} s for VQAv2 val): {verdict}")


if __name__ == "__main__":
    main()
