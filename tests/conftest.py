"""Shared fixtures: everything offline, the tiny PaliGemma built once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread: the tiny model's ops are microseconds long, and on a shared 2-core machine
# two threads spend most of a step waiting for each other (measured 5-8x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def pgm_home(tmp_path_factory):
    """A private PGM_HOME so `--model-path tiny` resolves to a model built for this session."""
    home = tmp_path_factory.mktemp("pgm_home")
    old = os.environ.get("PGM_HOME")
    os.environ["PGM_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("PGM_HOME", None)
    else:
        os.environ["PGM_HOME"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(pgm_home):
    """The tiny PaliGemma 1 (Gemma text model) folder, built once (~2 s)."""
    from paligemma_cli.model.tiny import ensure_tiny

    return ensure_tiny("tiny")


@pytest.fixture(scope="session")
def tiny_pg2_dir(pgm_home):
    """The tiny PaliGemma 2 (Gemma 2 text model) folder."""
    from paligemma_cli.model.tiny import ensure_tiny

    return ensure_tiny("tiny-pg2")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """`synthetic_data(task, n=8)` -> a folder with that task's synthetic official-format data (cached)."""
    from paligemma_cli.tasks import get_task

    made = {}

    def make(task: str, n: int = 8):
        if (task, n) not in made:
            root = tmp_path_factory.mktemp(f"synth_{task}_{n}")
            get_task(task).write_synthetic(root, n, seed=0)
            made[task, n] = root
        return made[task, n]

    return make


@pytest.fixture(scope="session")
def trained_experts(tmp_path_factory, tiny_model_dir):
    """Two tiny QLoRA experts trained once per session, each on its own synthetic task:
    {task: (adapter folder, data root)} for vqav2 and gqa (60 steps each, a few seconds)."""
    from paligemma_cli.config import build_run
    from paligemma_cli.tasks import get_task
    from paligemma_cli.train.loop import train

    root = tmp_path_factory.mktemp("experts")
    experts = {}
    for task in ("vqav2", "gqa"):
        data = root / f"data_{task}"
        get_task(task).write_synthetic(data, 48, seed=0)
        out = root / task
        train(build_run(dict(task=task, model_path="tiny", data_root=str(data), output_dir=str(out),
                             batch_size=16, gradient_accumulation_steps=1, max_steps=60, save_steps=1000,
                             logging_steps=60, learning_rate=6e-3)))
        experts[task] = (out, data)
    return experts


@pytest.fixture(scope="session")
def merge_inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Merge inputs built once per session from the tiny PaliGemma, all offline.

    adapter_a / adapter_b  LoRA adapters on the language model with non-zero B (init_lora_weights=False);
                           a uses rank_pattern + alpha_pattern, b uses rsLoRA, so the scales differ
    full_a / full_b        the same adapters merged into the base (merge_and_unload + save_pretrained)
    noisy_1 / _2 / _3      "full fine-tunes": every weight of the base plus noise, embedding included
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    from paligemma_cli.model.load import lora_target_regex

    root = tmp_path_factory.mktemp("merge_inputs")
    paths = {"base": Path(tiny_model_dir)}
    recipes = {"a": dict(r=4, lora_alpha=8, rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3}),
               "b": dict(r=4, lora_alpha=6, use_rslora=True)}
    for i, (name, extra) in enumerate(recipes.items()):
        torch.manual_seed(100 + i)
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
        peft_model = get_peft_model(model, LoraConfig(
            target_modules=lora_target_regex(("language",)), init_lora_weights=False, **extra))
        peft_model.save_pretrained(root / f"adapter_{name}")
        peft_model.merge_and_unload().save_pretrained(root / f"full_{name}")
        paths[f"adapter_{name}"], paths[f"full_{name}"] = root / f"adapter_{name}", root / f"full_{name}"
    weights = load_file(Path(tiny_model_dir) / "model.safetensors")
    for seed in (1, 2, 3):
        folder = root / f"noisy_{seed}"
        shutil.copytree(tiny_model_dir, folder)
        gen = torch.Generator().manual_seed(seed)
        noisy = {k: v + 0.02 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in weights.items()}
        save_file(noisy, folder / "model.safetensors", metadata={"format": "pt"})
        paths[f"noisy_{seed}"] = folder
    return paths
