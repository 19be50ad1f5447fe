"""End-to-end merges of tiny PaliGemmas: adapters vs. full models, streaming, loading, generating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paligemma_cli.merge import sparsify, tensors
from paligemma_cli.merge.driver import MergeRequest, merge

TARGET = "language_model.model.layers.1.mlp.up_proj.weight"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def run_merge(base, models, out, **kw):
    return merge(MergeRequest(base_model=str(base), models=tuple(str(m) for m in models), output=out, **kw))


def assert_same(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), key


@pytest.mark.parametrize("mode, extra", [("ties", {"density": 0.4}), ("dare_ties", {"density": 0.5, "seed": 5}),
                                         ("slerp", {}), ("linear", {"weights": (2.0, 1.0)})])
def test_adapters_and_the_equivalent_full_models_merge_alike(merge_inputs, tmp_path, mode, extra):
    p = merge_inputs
    from_adapters = run_merge(p["base"], [p["adapter_a"], p["adapter_b"]], tmp_path / "ad", mode=mode, **extra)
    run_merge(p["base"], [p["full_a"], p["full_b"]], tmp_path / "full", mode=mode, **extra)
    run_merge(p["base"], [p["adapter_a"], p["full_b"]], tmp_path / "mixed", mode=mode, **extra)
    merged = weights(tmp_path / "ad")
    assert_same(merged, weights(tmp_path / "full"))
    assert_same(merged, weights(tmp_path / "mixed"))
    base = weights(p["base"])
    assert not torch.equal(merged[TARGET], base[TARGET])  # the language model changed ...
    vision = "vision_tower.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(merged[vision], base[vision])  # ... nothing else did
    assert from_adapters.parts["unchanged"].tensors == len(base) - 14  # 2 layers x 7 projections


def reference_ties(deltas, density, weights=(1.0, 1.0)):
    """TIES written out the plain way (argsort top-k, sign of the sum, disjoint mean)."""
    trimmed = []
    for d in deltas:
        k = int(density * d.numel())
        keep = torch.zeros(d.numel(), dtype=torch.bool)
        keep[torch.argsort(d.abs().reshape(-1), descending=True)[:k]] = True
        trimmed.append(d * keep.view(d.shape))
    weighted = [w * t for w, t in zip(weights, trimmed)]
    sign = torch.where(sum(weighted) >= 0, 1.0, -1.0)
    agree = [torch.sign(e) == sign for e in weighted]
    num = sum(e * a for e, a in zip(weighted, agree))
    den = sum(w * a.float() for w, a in zip(weights, agree))
    return num / torch.where(den == 0, 1.0, den)


def test_ties_matches_a_plain_reference_on_peft_weight_changes(merge_inputs, tmp_path):
    p = merge_inputs
    run_merge(p["base"], [p["adapter_a"], p["adapter_b"]], tmp_path / "m", density=0.3, weights=(1.0, 2.0))
    base = weights(p["base"])
    deltas = [weights(p[f"full_{n}"])[TARGET] - base[TARGET] for n in "ab"]  # peft's own merge
    expected = base[TARGET] + reference_ties(deltas, 0.3, (1.0, 2.0))
    assert torch.allclose(weights(tmp_path / "m")[TARGET], expected, atol=1e-6)


def test_merged_model_loads_with_plain_from_pretrained_and_generates(merge_inputs, tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = merge_inputs
    out = tmp_path / "merged"
    run_merge(p["base"], [p["adapter_a"], p["noisy_1"]], out, mode="ties", density=0.5)
    assert {"config.json", "model.safetensors", "processor_config.json", "pgm_merge.json"} <= {
        f.name for f in out.iterdir()}
    recipe = json.loads((out / "pgm_merge.json").read_text())
    assert recipe["mode"] == "ties" and recipe["density"] == 0.5
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert torch.equal(model.state_dict()["model.language_model.layers.1.mlp.up_proj.weight"],
                       weights(out)[TARGET])
    batch = processor(text=["answer en what color is it"], images=[Image.new("RGB", (32, 32), "red")],
                      return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize("mode, extra", [("ties", {"density": 0.3}), ("dare_linear", {"density": 0.6, "seed": 1}),
                                         ("slerp", {"weights": (1.0, 3.0)}), ("magnitude_prune", {"density": 0.7})])
def test_streaming_in_row_chunks_writes_identical_bytes(merge_inputs, tmp_path, monkeypatch, mode, extra):
    p = merge_inputs
    monkeypatch.setattr(sparsify, "RNG_BLOCK", 256)  # DARE blocks of 4 rows of 64
    run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "whole", mode=mode, **extra)
    monkeypatch.setattr(tensors, "CHUNK_ENTRIES", 2048)  # the 1792 x 64 embedding: 56 chunks
    monkeypatch.setattr(tensors, "CACHE_BYTES", 0)  # and read again for the second pass
    monkeypatch.setattr(sparsify, "SMALL_TENSOR", 0)  # radix select on every tensor
    run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "chunked", mode=mode, **extra)
    whole, chunked = weights(tmp_path / "whole"), weights(tmp_path / "chunked")
    for key in whole:
        assert torch.equal(whole[key], chunked[key]), key


def test_fused_task_arithmetic_of_full_models_matches_the_method_byte_for_byte(merge_inputs, tmp_path,
                                                                            monkeypatch):
    from paligemma_cli.merge.methods import MergeParams, get_method

    p, kw = merge_inputs, dict(weights=(1.0, 0.5), lam=0.8, normalize=True)
    run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "ta", mode="task_arithmetic", **kw)
    monkeypatch.setattr(tensors, "CHUNK_ENTRIES", 2048)  # the embedding in row chunks
    run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "chunked", mode="task_arithmetic", **kw)
    base, one, two = weights(p["base"]), weights(p["noisy_1"]), weights(p["noisy_2"])
    merged, chunked = weights(tmp_path / "ta"), weights(tmp_path / "chunked")
    for key in base:  # the generic path: task vectors, the method's combine, then the base added
        deltas = [m[key].float() - base[key].float() for m in (one, two)]
        change, _ = get_method("task_arithmetic")(base[key].float(), deltas, MergeParams(**kw))
        expected = (base[key].float() + change).to(base[key].dtype)
        assert torch.equal(merged[key], expected) and torch.equal(chunked[key], expected), key


def test_adapter_output_refits_a_lora_that_peft_loads(merge_inputs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    p = merge_inputs
    result = run_merge(p["base"], [p["adapter_a"], p["adapter_b"]], tmp_path / "lora", mode="task_arithmetic",
                       weights=(0.5, 1.0), lam=0.8, output_format="adapter")
    assert max(result.lowrank_errors.values()) < 1e-5  # rank 4 + 4 holds the sum exactly
    run_merge(p["base"], [p["adapter_a"], p["adapter_b"]], tmp_path / "full", mode="task_arithmetic",
              weights=(0.5, 1.0), lam=0.8)
    base = AutoModelForImageTextToText.from_pretrained(p["base"])
    merged = PeftModel.from_pretrained(base, tmp_path / "lora").merge_and_unload()
    assert torch.allclose(merged.state_dict()["model.language_model.layers.1.mlp.up_proj.weight"],
                          weights(tmp_path / "full")[TARGET], atol=1e-5)
    small = run_merge(p["base"], [p["adapter_a"], p["adapter_b"]], tmp_path / "r2", density=0.5,
                      output_format="adapter", rank=2)
    assert len(small.lowrank_errors) == 14 and min(small.lowrank_errors.values()) > 0.01
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 2


def test_layerswap_takes_layers_whole(merge_inputs, tmp_path):
    p = merge_inputs
    run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "swap", mode="layerswap", layers="0=2,1=1")
    merged, one, two = weights(tmp_path / "swap"), weights(p["noisy_1"]), weights(p["noisy_2"])
    assert torch.equal(merged["language_model.model.layers.0.mlp.up_proj.weight"],
                       two["language_model.model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged[TARGET], one[TARGET])
    embed = "language_model.model.embed_tokens.weight"
    assert torch.allclose(merged[embed], (one[embed] + two[embed]) / 2, atol=1e-6)


@pytest.mark.slow
def test_compiled_kernels_give_the_eager_result(merge_inputs, tmp_path, monkeypatch):
    from paligemma_cli.merge import fused

    p = merge_inputs
    monkeypatch.setattr(fused, "MIN_ENTRIES", 4096)  # compile even the tiny model's tensors
    was = fused.enabled()
    fused.set_enabled(False)
    eager = run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "eager", density=0.3)
    fused.set_enabled(True)  # PGM_MERGE_COMPILE=0 in the environment is restored below
    try:
        compiled = run_merge(p["base"], [p["noisy_1"], p["noisy_2"]], tmp_path / "compiled", density=0.3)
        if not fused.enabled():
            pytest.skip("torch.compile is not usable here (the merge fell back to eager)")
    finally:
        fused.set_enabled(was)
    assert {k: (v.trimmed, v.conflicts) for k, v in eager.parts.items()} == \
        {k: (v.trimmed, v.conflicts) for k, v in compiled.parts.items()}
    assert_same(weights(tmp_path / "eager"), weights(tmp_path / "compiled"), atol=1e-6)


def test_adapter_output_at_the_default_rank_loads_where_a_module_is_smaller(merge_inputs, tmp_path):
    """Issue #22: two rank-24 adapters merge into a rank-48 LoRA, but k_proj / v_proj (32 x 64)
    can only hold rank 32. adapter_config.json must say so (rank_pattern) or PEFT refuses it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from paligemma_cli.config import ModelConfig
    from paligemma_cli.model.load import lora_target_regex, load_for_inference

    p = merge_inputs
    for i in range(2):
        torch.manual_seed(200 + i)
        model = AutoModelForImageTextToText.from_pretrained(p["base"])
        get_peft_model(model, LoraConfig(r=24, lora_alpha=48, target_modules=lora_target_regex(("language",)),
                                         init_lora_weights=False)).save_pretrained(tmp_path / f"r24_{i}")
    adapters = [tmp_path / "r24_0", tmp_path / "r24_1"]
    result = run_merge(p["base"], adapters, tmp_path / "lora", mode="task_arithmetic", weights=(0.5, 1.0),
                       output_format="adapter")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    small = "model.language_model.layers.0.self_attn.k_proj"
    assert config["r"] == 48 and config["rank_pattern"][small] == 32 and config["alpha_pattern"][small] == 32
    assert len(config["rank_pattern"]) == 4 and "rank_pattern" in result.notes[0]
    assert max(result.lowrank_errors.values()) < 1e-5  # rank 24 + 24 (or the smaller side) holds the sum
    run_merge(p["base"], adapters, tmp_path / "full", mode="task_arithmetic", weights=(0.5, 1.0))
    model = load_for_inference(ModelConfig(model_path=str(p["base"]), quantization="none", compute_dtype="fp32"),
                               adapter=tmp_path / "lora")
    state = model.merge_and_unload().state_dict()
    full = weights(tmp_path / "full")
    for layer in (0, 1):
        for proj in ("self_attn.k_proj", "self_attn.q_proj", "mlp.down_proj"):
            name = f"model.language_model.layers.{layer}.{proj}.weight"
            assert torch.allclose(state[name], full[f"language_model.model.layers.{layer}.{proj}.weight"],
                                  atol=1e-5), name


@pytest.mark.parametrize("mode, extra", [("ties", {"density": 0.4}), ("tsv", {}), ("della", {"seed": 2})])
def test_in_memory_merge_is_byte_for_byte_what_pgm_merge_writes(merge_inputs, tmp_path, mode, extra):
    from paligemma_cli.merge.driver import prepare
    from paligemma_cli.merge.tensors import MergeStream, merged_state_dict

    p = merge_inputs
    models = (str(p["adapter_a"]), str(p["noisy_1"]))
    written = run_merge(p["base"], models, tmp_path / "m", mode=mode, **extra)
    job = prepare(MergeRequest(base_model=str(p["base"]), models=models, mode=mode, **extra))
    state, parts = merged_state_dict(job)
    on_disk = weights(tmp_path / "m")
    assert state.keys() == on_disk.keys()
    for key, value in on_disk.items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    assert {k: (v.tensors, v.trimmed, v.conflicts) for k, v in parts.items()} == \
        {k: (v.tensors, v.trimmed, v.conflicts) for k, v in written.parts.items()}
    adapter_only = prepare(MergeRequest(base_model=str(p["base"]), models=(str(p["adapter_a"]), str(p["adapter_b"])),
                                        mode=mode, **extra))
    changed = dict(MergeStream(adapter_only).tensors(changed_only=True))
    assert len(changed) == 14 and TARGET in changed  # the language model's LoRA modules only


def test_side_inputs_reach_the_method_per_tensor(merge_inputs):
    """The hook a data-aware method (RegMean) will use: per-tensor extras from the job."""
    from dataclasses import replace

    from paligemma_cli.merge.driver import prepare
    from paligemma_cli.merge.methods import METHODS, MergeStats
    from paligemma_cli.merge.tensors import MergeStream

    p = merge_inputs
    seen = {}

    def scaled(base, deltas, params, hints):  # a stand-in method: uses its side input as a weight
        seen[hints.name] = hints.side
        return hints.side * (deltas[0] + deltas[1]) / 2, MergeStats(entries=base.numel() * 2)

    job = prepare(MergeRequest(base_model=str(p["base"]), models=(str(p["adapter_a"]), str(p["adapter_b"])),
                               mode="linear"))
    job = replace(job, method=replace(METHODS["linear"], fn=scaled), side_inputs=lambda name: 2.0)
    state = dict(MergeStream(job).tensors(changed_only=True))
    module = "model.language_model.layers.1.mlp.up_proj.weight"
    assert seen[module] == 2.0 and len(seen) == 14
    base, full_a, full_b = weights(p["base"]), weights(p["full_a"]), weights(p["full_b"])
    expected = base[TARGET] + (full_a[TARGET] - base[TARGET]) + (full_b[TARGET] - base[TARGET])
    assert torch.allclose(state[TARGET], expected, atol=1e-5)
