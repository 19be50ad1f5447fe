"""Model cards (README.md) for what pgm pushes to the Hub, written from the files pgm wrote.

A pgm train folder gives run_config.json (the recipe), train_log.jsonl (the evaluations, the best
step, the last loss) and adapter_config.json (the base the adapter loads on); a pgm merge folder
gives pgm_merge.json (the recipe) and, for each input that is a pgm train folder, its task. The
card says the base model and task, the recipe, the metrics, how to load the model with plain
transformers (+ peft for an adapter), and the pgm command that made it. The YAML header is
huggingface_hub's ModelCardData.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from paligemma_cli import __version__
from paligemma_cli.config import train_command
from paligemma_cli.outputs import MERGE_RECIPE, RUN_CONFIG, TRAIN_LOG

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DEFAULT_QUESTION = "what is in the picture?"


def hub_model(name: str | None) -> str | None:
    """`name` when it is a hub model id rather than a local folder (what the card may link to)."""
    return name if name and HUB_ID.match(name) and not Path(name).expanduser().exists() else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict)]


def header(base: str | None, library: str, tags: list[str]) -> str:
    from huggingface_hub import ModelCardData

    linked = hub_model(base)
    data = ModelCardData(base_model=linked, library_name=library, pipeline_tag="image-text-to-text",
                         license="gemma" if linked and linked.startswith("google/") else None, tags=tags)
    return f"---\n{data.to_yaml()}\n---"


def table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("setting", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value not in (None, "")]
    return "\n".join(lines)


def code(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text}\n```"


def usage(model: str, processor: str, prompt: str, max_new_tokens: int, base: str | None = None) -> str:
    """Loading and one greedy answer with transformers (+ peft when `base` is given: an adapter)."""
    q = json.dumps
    lines = ["import torch", "from PIL import Image"] + (["from peft import PeftModel"] if base else []) + [
        "from transformers import AutoModelForImageTextToText, AutoProcessor", ""]
    if base:
        lines += [f"base = AutoModelForImageTextToText.from_pretrained({q(base)}, dtype=torch.bfloat16)",
                  f"model = PeftModel.from_pretrained(base, {q(model)}).eval()"]
    else:
        lines += [f"model = AutoModelForImageTextToText.from_pretrained({q(model)}, dtype=torch.bfloat16).eval()"]
    lines += [f"processor = AutoProcessor.from_pretrained({q(processor)})",
              'image = Image.open("image.jpg").convert("RGB")',
              f'inputs = processor(text={q("<image>" + prompt)}, images=image, return_tensors="pt").to(torch.bfloat16)',
              "with torch.no_grad():",
              f"    out = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)",
              'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return code("\n".join(lines), "python")


def task_of(name: str | None):
    from paligemma_cli.tasks import TASKS

    return TASKS.get(name or "")


def number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----- pgm train ---------------------------------------------------------------------------------

def train_card(folder: Path, repo_id: str) -> str:
    """The card of a finished pgm train output folder, to be pushed as `repo_id`."""
    folder = Path(folder)
    info = read_json(folder / RUN_CONFIG)
    s = info.get("pgm_run", {})
    task = task_of(s.get("task"))
    title = task.title if task else s.get("task", "?")
    base_name = s.get("model_path")
    base = hub_model(base_name) or read_json(folder / "adapter_config.json").get("base_model_name_or_path") \
        or base_name
    where = "" if hub_model(base_name) else " (a local folder on the machine that trained it)"
    prompt = task.prefix(DEFAULT_QUESTION, s.get("prompt")) if task else f"answer en {DEFAULT_QUESTION}"
    max_new = s.get("max_new_tokens") or (task.max_new_tokens if task else 32)
    intro = (f"A LoRA adapter for **{base_name}**{where}, fine-tuned by pgm "
             f"on **{title}** "
             f"({'QLoRA on a ' + s['quantization'] + ' base' if s.get('quantization') != 'none' else 'LoRA'}). "
             f"PaliGemma prompt: `{prompt}`.")
    parts = [header(base_name, "peft", ["paligemma", "pgm", "lora", str(s.get("task", ""))]),
             f"# {repo_id.split('/')[-1]}", intro,
             "## Training recipe", train_recipe(s, info, task),
             "## Results", train_results(read_log(folder / TRAIN_LOG), task, s, repo_id)]
    if (folder / "loss.png").is_file():
        parts.append("![training loss and evaluations](loss.png)")
    parts += [
             "## How to use",
             "With transformers and peft (the adapter goes on the base model it was trained on):",
             usage(repo_id, repo_id, prompt, max_new, base=base),
             "## How it was made", code(train_command(s), "bash"),
             f"Made with pgm {__version__}; `run_config.json` and `train_log.jsonl` in this repo hold every "
             "setting and every logged step."]
    return "\n\n".join(parts) + "\n"


def train_recipe(s: dict[str, Any], info: dict[str, Any], task) -> str:
    processes = info.get("processes", 1)
    batch, accum = s.get("batch_size"), s.get("gradient_accumulation_steps")
    effective = batch * accum * processes if isinstance(batch, int) and isinstance(accum, int) else "?"
    source = s.get("hf_dataset") or ("official files" if s.get("data_root") else
                                     "JSONL files" if s.get("train_file") else None)
    split = s.get("train_split") or (task.train_split if task else "train")
    examples = f", {info['examples']:,} examples" if info.get("examples") else ""
    quant = s.get("quantization", "?") + (", NF4 with double quantisation" if s.get("quantization") == "4bit" else "")
    steps = info.get("total_steps")
    how_long = " (--max-steps)" if s.get("max_steps") else f" ({number(s.get('num_epochs'))} epochs)"
    trainable, total = info.get("trainable_params"), info.get("total_params")
    share = f"{trainable:,} of {total:,} ({100 * trainable / total:.2f}%)" if trainable and total else None
    rows = [("base model", f"{s.get('model_path')}" + (f" (revision {s['revision']})" if s.get("revision") else "")),
            ("task", f"{task.title}, `{task.name}`" if task else s.get("task")),
            ("training data", source and f"{source}, split {split}{examples}"),
            ("quantization", f"{quant}; compute dtype {s.get('compute_dtype')}"),
            ("LoRA", f"rank {s.get('lora_rank')}, alpha {number(s.get('lora_alpha'))}, "
                     f"dropout {number(s.get('lora_dropout'))}, on {s.get('lora_targets')}"),
            ("optimiser", f"{s.get('optimizer')}, learning rate {number(s.get('learning_rate'))}, "
                          f"{s.get('lr_scheduler')} schedule, warm-up {number(s.get('warmup_ratio'))}, "
                          f"weight decay {number(s.get('weight_decay'))}, "
                          f"gradient clipping {number(s.get('max_grad_norm'))}"),
            ("batch", f"{batch} per device x {accum} accumulation x {processes} process"
                      f"{'es' * (processes != 1)} = {effective}"),
            ("steps", steps and f"{steps:,}{how_long}"),
            ("max length", f"{s.get('max_length') or (task.max_length if task else '?')} text tokens"),
            ("seed", s.get("seed")),
            ("trainable parameters", share)]
    return table(rows)


def train_results(log: list[dict[str, Any]], task, s: dict[str, Any], repo_id: str) -> str:
    losses = [r for r in log if "loss" in r]
    last = (f"Final training loss {losses[-1]['loss']:.4f} at step {losses[-1]['step']}."
            if losses else "No training loss was logged.")
    evals = [r["eval"] for r in log if isinstance(r.get("eval"), dict)]
    if not evals:
        return (f"Not evaluated during training (no --eval-steps). {last} Measure it with "
                f"`hf download {repo_id} --local-dir adapter` and "
                f"`pgm eval --task {s.get('task')} --adapter adapter --data-root DATA`.")
    names = list(dict.fromkeys(k for e in evals for k in e if k != "step"))
    lines = ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join([str(e.get("step"))] + [number(e.get(n, "")) for n in names]) + " |" for e in evals]
    split = s.get("eval_split") or (task.eval_split if task else "eval")
    text = [f"Evaluated on the {split} split"
            + (f" (first {s['max_eval_samples']:,} examples)" if s.get("max_eval_samples") else "")
            + " with the task's official metric, greedy decoding:", "\n".join(lines)]
    headline = task.headline if task else None
    scored = [e for e in evals if isinstance(e.get(headline), (int, float))]
    if scored:
        best = max(scored, key=lambda e: e[headline])  # the first of equals, as the loop keeps best/
        final_step = losses[-1]["step"] if losses else evals[-1]["step"]
        note = "" if best["step"] == final_step else (f" This repo holds the final adapter (step {final_step}); "
                                                      f"best/ in the local run folder holds step {best['step']}'s.")
        text.append(f"Best {headline}: {number(best[headline])} at step {best['step']}.{note} {last}")
    return "\n\n".join(text)


# ----- pgm merge ---------------------------------------------------------------------------------

def input_task(folder: Path) -> str | None:
    """The task of a merge input that is pgm train output: its folder, best/ or checkpoints/step-N."""
    for candidate in (folder, folder.parent, folder.parent.parent):
        task = read_json(candidate / RUN_CONFIG).get("task")
        if task:
            return task
    return None


def merge_card(folder: Path, repo_id: str, command: str) -> str:
    """The card of a pgm merge output folder (full model or adapter), made by `command`."""
    folder = Path(folder)
    r = read_json(folder / MERGE_RECIPE)
    adapter = r.get("output_format") == "adapter"
    base_name = r.get("base_model")
    models = list(r.get("models", []))
    tasks = [input_task(Path(m).expanduser()) for m in models]
    known = [t for t in dict.fromkeys(tasks) if t]
    task = task_of(known[0]) if known else None
    prompt = task.prefix(DEFAULT_QUESTION) if task else f"answer en {DEFAULT_QUESTION}"
    what = f"A LoRA adapter (rank {r.get('rank') or '?'}, fitted by truncated SVD)" if adapter else "A full model"
    intro = (f"{what} merged by pgm from {len(models)} fine-tuned "
             f"PaliGemmas of **{base_name}** with **{r.get('mode')}**"
             + (f"; the inputs were trained on {', '.join(known)}" if known else "") + ".")
    weights = r.get("weights") or []
    rows = [("method", r.get("mode")), ("base model", base_name)]
    rows += [(f"model {i + 1}", f"{m} (weight {number(weights[i]) if i < len(weights) else '?'}"
              + (f", task {t}" if t else "") + ")") for i, (m, t) in enumerate(zip(models, tasks))]
    rows += [("density", number(r.get("density"))), ("lambda", number(r.get("lambda"))),
             ("normalize", r.get("normalize")), ("seed", r.get("seed")), ("layers", r.get("layers")),
             ("output", "adapter" if adapter else "full model")]
    load = usage(repo_id, base_name, prompt, task.max_new_tokens if task else 32, base=base_name) if adapter \
        else usage(repo_id, repo_id, prompt, task.max_new_tokens if task else 32)
    name = known[0] if known else "TASK"
    evaluate = (f"`pgm eval --task {name} --model-path {repo_id} --data-root DATA`" if not adapter else
                f"`hf download {repo_id} --local-dir merged` and "
                f"`pgm eval --task {name} --adapter merged --data-root DATA`")
    parts = [header(base_name, "peft" if adapter else "transformers",
                    ["paligemma", "pgm", "merge", str(r.get("mode", ""))] + known),
             f"# {repo_id.split('/')[-1]}", intro, "## Merge recipe", table(rows),
             "## Results", f"pgm merge does not evaluate; measure the merge with {evaluate}.",
             "## How to use", "With transformers" + (" and peft (on the base model):" if adapter else ":"), load,
             "## How it was made", code(command, "bash"),
             f"Made with pgm {__version__}; `{MERGE_RECIPE}` in this repo records the recipe and per-part statistics."]
    return "\n\n".join(parts) + "\n"
