"""memory-estimate: the weight part equals real storage to the byte, LoRA counts equal peft's, the
logits follow the answer positions K (model.loss), a measured CPU step agrees within 10 %."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from paligemma_cli.config import LoraConfig, ModelConfig
from paligemma_cli.diagnose import memory
from paligemma_cli.model.presets import preset_config, preset_names
from paligemma_cli.errors import PgmError

TARGETS = ["language", "vision", "projector", "language,vision", "language,projector",
           "vision,projector", "language,vision,projector"]


def stored_bytes(model) -> int:
    """What the loaded model holds for its weights: every parameter once (tied ones once), plus
    the tensors of each bitsandbytes QuantState (absmax, code book, offset, nested absmax and
    code book) and Int8Params' row scales. Buffers (position ids, rotary tables) are not weights."""
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if torch.is_tensor(t) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for p in model.parameters():
        add(p)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, qs.code, qs.offset):
                add(t)
            if qs.nested:
                add(qs.state2.absmax)
                add(qs.state2.code)
        add(getattr(p, "CB", None))
        add(getattr(p, "SCB", None))
    return total


@pytest.fixture(scope="module", params=["tiny", "tiny-pg2"])
def variant(request, pgm_home):
    return request.param


def test_layout_names_and_shapes_match_the_model(variant):
    from transformers import AutoModelForImageTextToText

    from paligemma_cli.model.tiny import ensure_tiny

    model = AutoModelForImageTextToText.from_pretrained(ensure_tiny(variant))
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    predicted = {p.name: p.shape for p in memory.layout(memory.load_config(variant))}
    assert predicted == real


@pytest.mark.parametrize("quantization", ["4bit", "8bit", "none"])
def test_weight_estimate_equals_storage_to_the_byte(variant, quantization):
    from paligemma_cli.model.load import attach_lora, load_model

    cfg = ModelConfig(model_path=variant, quantization=quantization, compute_dtype="bf16")
    model = load_model(cfg)
    est = memory.estimate(memory.load_config(variant),
                          memory.TrainSetup(quantization=quantization, compute_dtype="bf16"))
    assert stored_bytes(model) == est.weights
    if quantization == "4bit":
        assert est.weights_quantized > 0 and sum(
            type(p).__name__ == "Params4bit" for p in model.parameters()) > 0
    # After attach_lora: the k-bit upcast row and the LoRA row, again exactly.
    peft_model = attach_lora(model, cfg, LoraConfig())
    lora = sum(p.numel() * p.element_size() for p in peft_model.parameters() if p.requires_grad)
    assert lora == est.lora
    assert stored_bytes(peft_model) - lora == est.weights + est.kbit_upcast


@pytest.mark.parametrize("targets", TARGETS)
def test_lora_count_equals_peft(variant, targets):
    from paligemma_cli.model.load import attach_lora, load_model

    cfg = ModelConfig(model_path=variant, quantization="none", gradient_checkpointing=False)
    lora_cfg = LoraConfig(lora_rank=8, lora_targets=targets)
    trainable, _total = attach_lora(load_model(cfg), cfg, lora_cfg).get_nb_trainable_parameters()
    assert memory.lora_param_count(memory.load_config(variant), lora_cfg.target_parts(), 8) == trainable


@pytest.mark.parametrize("numel", [64 * 64, 64 * 32, 1000, 64 * 256 * 3 + 64])
@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_matches_bitsandbytes(numel, double_quant):
    import bitsandbytes.functional as F
    import torch

    packed, state = F.quantize_4bit(torch.randn(numel, dtype=torch.bfloat16), quant_type="nf4",
                                    compress_statistics=double_quant)
    tensors = [packed, state.absmax, state.code]
    if double_quant:
        tensors += [state.offset, state.state2.absmax, state.state2.code]
    assert memory.nf4_bytes(numel, double_quant) == sum(t.numel() * t.element_size() for t in tensors)


def test_presets_match_published_parameter_counts():
    # keras-hub pali_gemma_presets.py lists 2,923,335,408 / 3,032,094,960 / 9,662,409,456 for the
    # 224 px PaliGemma 3B / PaliGemma 2 3B / 10B with a 257,152-row vocabulary; the HF checkpoints
    # pad it to 257,216 rows (64 more rows of the text width).
    published = {"google/paligemma-3b-pt-224": 2_923_335_408, "google/paligemma-3b-pt-448": 2_924_220_144,
                 "google/paligemma-3b-pt-896": 2_927_759_088, "google/paligemma2-3b-pt-224": 3_032_094_960,
                 "google/paligemma2-3b-pt-896": 3_036_518_640, "google/paligemma2-10b-pt-448": 9_663_294_192}
    for name, count in published.items():
        config = preset_config(name)
        params = sum(p.numel for p in memory.layout(config))
        assert params == count + 64 * config["text_config"]["hidden_size"], name
    assert len(preset_names()) == 12 and preset_config("google/paligemma2-28b-pt-896") is not None
    assert preset_config("google/paligemma-28b-pt-224") is None  # no such checkpoint


def test_image_tokens_follow_the_resolution():
    config = preset_config("google/paligemma-3b-pt-448")
    assert [memory.image_tokens(config, r) for r in (224, 448, 896)] == [256, 1024, 4096]
    est = memory.estimate(config, memory.TrainSetup(max_length=64))
    assert est.seq_len == 1024 + 64


def test_checkpointing_and_batch_size_move_the_activations():
    config = preset_config("google/paligemma-3b-pt-448")
    base = memory.TrainSetup()
    on = memory.estimate(config, base)
    off = memory.estimate(config, dataclasses.replace(base, gradient_checkpointing=False))
    half = memory.estimate(config, dataclasses.replace(base, batch_size=2))
    assert off.activations > 1.5 * on.activations
    assert half.activations * 2 == on.activations
    assert on.weights == half.weights and on.lora == half.lora
    eight = memory.estimate(config, dataclasses.replace(base, optimizer="adamw_8bit"))
    assert eight.optimizer < on.optimizer / 3


def test_fit_keeps_the_effective_batch_and_fits():
    config = preset_config("google/paligemma-3b-pt-448")
    setup = memory.TrainSetup(batch_size=4)
    plan = memory.fit(config, setup, memory.parse_size("8GB"), effective_batch=16)
    assert plan.fits and plan.estimate.total <= 8 * memory.GiB
    assert plan.batch_size < 4 and plan.batch_size * plan.gradient_accumulation_steps == 16
    bigger = memory.estimate(config, dataclasses.replace(setup, batch_size=plan.batch_size * 2))
    assert bigger.total > 8 * memory.GiB  # the largest batch size that fits
    plan = memory.fit(config, setup, memory.parse_size("24GB"), effective_batch=16)
    assert plan.flags() == "--batch-size 4 --gradient-accumulation-steps 4"
    one = memory.estimate(config, dataclasses.replace(setup, batch_size=1)).total
    tiny_card = memory.fit(config, setup, one - 1, effective_batch=16)
    assert tiny_card.fits and tiny_card.model_path == "google/paligemma-3b-pt-224"
    assert not memory.fit(config, setup, memory.parse_size("1GB")).fits


def test_answer_positions_default_to_and_stop_at_max_length():
    assert memory.TrainSetup(max_length=64).keep == 64
    assert memory.TrainSetup(max_length=64, answer_tokens=9).keep == 9
    assert memory.TrainSetup(max_length=64, answer_tokens=500).keep == 64
    est = memory.estimate(preset_config("google/paligemma-3b-pt-448"), memory.TrainSetup(answer_tokens=9))
    assert est.answer_positions == 9 and "last 9" in dict((r[0], r[2]) for r in est.rows())["activations"]


def test_logits_grow_with_answer_positions_not_image_tokens():
    """B x K x vocab: the same at 224 and 896 px; linear in K and in the vocabulary."""
    base = memory.TrainSetup(gradient_checkpointing=False, answer_tokens=17)
    per_entry = memory.ACT["fp32"]["logits"]
    by_res = {res: preset_config(f"google/paligemma-3b-pt-{res}") for res in (224, 896)}
    for config in by_res.values():
        assert memory.logits_bytes(config, base) == 4 * 17 * per_entry * 257216
    # Without checkpointing the logits add to the layers' activations: K moves them by exactly
    # B x dK x vocab x bytes, and the resolution moves only the per-token layer terms.
    acts = {(res, k): memory.activation_bytes(c, dataclasses.replace(base, answer_tokens=k))
            for res, c in by_res.items() for k in (17, 33)}
    assert acts[224, 33] - acts[224, 17] == acts[896, 33] - acts[896, 17] == 4 * 16 * per_entry * 257216
    wider = dict(by_res[224], text_config={**by_res[224]["text_config"], "vocab_size": 2 * 257216})
    widened = memory.activation_bytes(wider, base) - memory.activation_bytes(by_res[224], base)
    assert widened == 4 * 17 * per_entry * 257216  # the vocabulary only enters through the kept rows


def test_answer_positions_move_the_checkpointed_peak_only_when_logits_lead():
    # 448 px, 64 text tokens: recomputing a decoder layer over 4 x 1088 tokens is the peak for any
    # K <= 64. 224 px with 256 text tokens (DocVQA's budget) and long answers: the logits lead.
    c448 = preset_config("google/paligemma-3b-pt-448")
    assert len({memory.estimate(c448, memory.TrainSetup(answer_tokens=k)).total for k in (2, 17, 64)}) == 1
    c224 = preset_config("google/paligemma-3b-pt-224")
    short, long = (memory.estimate(c224, memory.TrainSetup(max_length=256, answer_tokens=k)) for k in (33, 256))
    assert long.activations - short.activations > memory.GiB
    assert long.activations > long.logits > 0.8 * long.activations


def test_parse_size():
    assert memory.parse_size("24GB") == 24 * memory.GiB
    assert memory.parse_size("80 GiB") == 80 * memory.GiB
    assert memory.parse_size("16000MB") == 16000 * memory.MiB
    with pytest.raises(PgmError):
        memory.parse_size("lots")


def test_unknown_model_lists_the_presets(tmp_path):
    with pytest.raises(PgmError) as info:
        memory.load_config("someone/unknown-model")
    assert "google/paligemma-3b-pt-448" in str(info.value)
    (tmp_path / "config.json").write_text('{"text_config": {"hidden_size": 64}}')
    assert memory.load_config(str(tmp_path))["text_config"]["hidden_size"] == 64


def test_measured_cpu_steps_track_the_estimate_and_follow_k(pgm_home):
    """The activation coefficients were fitted on CPU allocation peaks; check two K live: each
    within 10 % of the estimate, and the measured growth with K as estimated (within 25 %)."""
    from paligemma_cli.diagnose.measure import measure

    config, peaks = memory.load_config("tiny"), {}
    for k in (4, 28):
        setup = memory.TrainSetup(batch_size=2, max_length=32, answer_tokens=k)
        m = measure(ModelConfig(model_path="tiny"), LoraConfig(), setup, steps=2)
        assert m.answer_positions == k  # the synthetic batch has the answer length asked for
        est = memory.estimate(config, dataclasses.replace(setup, max_length=m.seq_len - 16))
        assert m.weights == est.weights
        assert m.peak is not None
        allocated = est.total - est.overhead
        assert 0.9 * m.peak < allocated < 1.1 * m.peak, (k, allocated, m.peak)
        peaks[k] = (m.peak, allocated)
    grew, predicted = peaks[28][0] - peaks[4][0], peaks[28][1] - peaks[4][1]
    assert grew > 0 and 0.75 * grew < predicted < 1.25 * grew, (grew, predicted)


def test_docs_table_matches_the_estimates():
    text = (Path(__file__).resolve().parents[2] / "docs" / "memory.md").read_text()
    for res in (224, 448, 896):
        est = memory.estimate(preset_config(f"google/paligemma-3b-pt-{res}"), memory.TrainSetup())
        assert f"{est.total / memory.GiB:.2f} GiB" in text, res
