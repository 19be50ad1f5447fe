"""Merge inputs built once per session from the tiny PaliGemma, all offline.

adapter_a / adapter_b  LoRA adapters on the language model with non-zero B (init_lora_weights=False);
                       a uses rank_pattern + alpha_pattern, b uses rsLoRA, so the scales differ
full_a / full_b        the same adapters merged into the base (merge_and_unload + save_pretrained)
noisy_1 / _2 / _3      "full fine-tunes": every weight of the base plus noise, embedding included
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def merge_inputs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
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
