"""Model loading: the one BitsAndBytesConfig, LoRA targets, model-path errors."""

import re

import pytest
import torch

from paligemma_cli.config import LoraConfig, ModelConfig
from paligemma_cli.model.load import (build_quantization_config, lora_target_regex, load_model,
                                        resolve_model_path)
from paligemma_cli.errors import PgmError


@pytest.mark.parametrize("dtype,expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                            ("fp32", torch.float32), ("auto", torch.bfloat16)])
def test_4bit_config_carries_the_compute_dtype(dtype, expected):
    cfg = build_quantization_config(ModelConfig(compute_dtype=dtype))
    # The attribute transformers reads: a misspelt keyword would leave it at fp32 silently.
    assert cfg.bnb_4bit_compute_dtype == expected
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert "model.multi_modal_projector" in cfg.llm_int8_skip_modules


def test_8bit_and_none():
    assert build_quantization_config(ModelConfig(quantization="8bit")).load_in_8bit
    assert build_quantization_config(ModelConfig(quantization="none")) is None


def test_loaded_4bit_model_quantises_decoder_not_projector(tiny_model_dir):
    import bitsandbytes as bnb

    model = load_model(ModelConfig(model_path="tiny"))
    layer = model.model.language_model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.compute_dtype == torch.bfloat16
    assert not isinstance(model.model.multi_modal_projector.linear, bnb.nn.Linear4bit)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)


@pytest.mark.parametrize("parts,count", [(("language",), 2 * 7), (("vision",), 2 * 6), (("projector",), 1),
                                         (("language", "vision", "projector"), 14 + 12 + 1)])
def test_lora_target_regex_matches_exactly_the_intended_modules(tiny_model_dir, parts, count):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    pattern = re.compile(lora_target_regex(parts))
    matched = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    assert len(matched) == count
    if parts == ("language",):  # q/k/v also exist in SigLIP: the language set must not take them
        assert all(n.startswith("model.language_model.") for n in matched)


def test_attach_lora_trains_only_lora(tiny_model_dir):
    from paligemma_cli.model.load import attach_lora

    cfg = ModelConfig(model_path="tiny")
    model = attach_lora(load_model(cfg), cfg, LoraConfig(lora_rank=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # r * (in + out) per module; hidden 64, 2 heads x 32, 1 KV head x 32, MLP 128, 2 layers.
    per_layer = {"q": 64 + 64, "k": 64 + 32, "v": 64 + 32, "o": 64 + 64, "gate": 64 + 128, "up": 64 + 128,
                 "down": 128 + 64}
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 4 * 2 * sum(per_layer.values())


@pytest.mark.parametrize("path,message", [("/nonexistent/model", "does not exist"),
                                          ("./not-here", "does not exist")])
def test_bad_model_paths(path, message):
    with pytest.raises(PgmError, match=message):
        resolve_model_path(path)


def test_adapter_given_as_model_path(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "google/paligemma-3b-pt-448"}')
    with pytest.raises(PgmError, match="is a LoRA adapter") as exc:
        resolve_model_path(str(tmp_path))
    assert "--adapter" in exc.value.hint


def test_adapter_base_model_prefers_pgm_record(tmp_path):
    import json

    from paligemma_cli.model.load import adapter_base_model

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-00000010"
    ckpt.mkdir(parents=True)
    for folder in (run, ckpt):
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/tiny-v3"}))
    assert adapter_base_model(run) == "/cache/tiny-v3"  # no pgm record: PEFT's field
    (run / "run_config.json").write_text(json.dumps({"pgm_run": {"model_path": "tiny"}}))
    assert adapter_base_model(run) == "tiny"
    assert adapter_base_model(ckpt) == "tiny"  # a checkpoint finds its run's record


def test_not_an_adapter_fails_before_loading(tmp_path):
    from paligemma_cli.model.load import load_for_inference

    with pytest.raises(PgmError, match="has no adapter_config.json"):
        load_for_inference(ModelConfig(model_path="/definitely/not/here"), tmp_path)
