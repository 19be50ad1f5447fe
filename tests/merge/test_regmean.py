"""RegMean: hand-worked matrices, the least-squares identity, Gram matrices from the hooks, and a
whole `pgm merge regmean` of tiny experts against an independent implementation here."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paligemma_cli.merge.methods import get_method
from paligemma_cli.merge.params import MergeParams, TensorHints
from paligemma_cli.merge.regmean import RegMeanGrams

REGMEAN = get_method("regmean")


def run(deltas, grams, alpha, base=None):
    base = torch.zeros_like(deltas[0]) if base is None else base
    merged, _ = REGMEAN(base, deltas, MergeParams(weights=(1.0,) * len(deltas), regmean_alpha=alpha),
                        TensorHints(side=RegMeanGrams(grams, alpha)))
    return merged


def test_hand_worked_two_experts_diagonal_grams():
    # S = G1 + G2 = diag(3, 4); tau1 G1 + tau2 G2 = [2, 3]; W* = [2/3, 3/4]
    merged = run([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])],
                 [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])], 1.0)
    assert torch.allclose(merged, torch.tensor([[2 / 3, 3 / 4]]), atol=1e-6)


def test_hand_worked_off_diagonal_shrunk_by_alpha():
    # a = 0.5: G~1 = [[2, .5], [.5, 1]]; S = [[3, .5], [.5, 4]]; [2, 3.5] S^-1 = [6.25, 9.5] / 11.75
    merged = run([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])],
                 [torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])], 0.5)
    assert torch.allclose(merged, torch.tensor([[6.25 / 11.75, 9.5 / 11.75]]), atol=1e-6)


def test_alpha_one_is_least_squares_over_all_tasks_inputs():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    experts = [base + 0.3 * torch.randn(5, 8, generator=gen, dtype=torch.float64) for _ in range(3)]
    inputs = [torch.randn(n, 8, generator=gen, dtype=torch.float64) for n in (20, 7, 13)]
    merged = base + run([w - base for w in experts], [x.T @ x for x in inputs], 1.0, base=base)
    stacked_x = torch.cat(inputs)
    stacked_y = torch.cat([x @ w.T for x, w in zip(inputs, experts)])
    expected = torch.linalg.lstsq(stacked_x, stacked_y).solution.T
    assert torch.allclose(merged, expected, atol=1e-9)


def test_rows_can_be_merged_in_chunks_and_tensors_without_grams_get_the_mean():
    gen = torch.Generator().manual_seed(1)
    deltas = [torch.randn(6, 4, generator=gen) for _ in range(2)]
    grams = [(lambda x: x.T @ x)(torch.randn(10, 4, generator=gen)) for _ in range(2)]
    whole = run(deltas, grams, 0.9)
    side = RegMeanGrams(grams, 0.9)  # one factorisation serves every chunk of the tensor
    parts = [REGMEAN(torch.zeros(3, 4), [d[r] for d in deltas], MergeParams(weights=(1.0, 1.0), regmean_alpha=0.9),
                     TensorHints(side=side))[0] for r in (slice(0, 3), slice(3, 6))]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-6)
    mean, _ = REGMEAN(torch.zeros(4), [torch.ones(4), 3 * torch.ones(4)], MergeParams(weights=(1.0, 1.0)),
                      TensorHints(side=None))
    assert torch.equal(mean, 2 * torch.ones(4))


def _layer_inputs(model, batches, module):
    """The inputs a layer sees, captured by a plain forward hook (padding left out)."""
    seen = []
    mask = {}

    def keep(_m, args, _out):
        x = args[0]
        if x.dim() == 3 and x.shape[:2] == mask["m"].shape:
            x = x[mask["m"].bool()]
        seen.append(x.reshape(-1, x.shape[-1]).double())

    handle = module.register_forward_hook(keep)
    with torch.no_grad():
        for batch in batches():
            mask["m"] = batch["attention_mask"]
            model(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    return torch.cat(seen)


@pytest.fixture(scope="module")
def experts(merge_inputs, synthetic_data):
    return {"models": [merge_inputs["adapter_a"], merge_inputs["adapter_b"]],
            "sets": [("vqav2", synthetic_data("vqav2", 8)), ("gqa", synthetic_data("gqa", 8))]}


def test_hook_grams_equal_the_layer_inputs_gram(merge_inputs, experts):
    from paligemma_cli.config import DataConfig, ModelConfig
    from paligemma_cli.merge.calibrate import calibration_batches, collect_grams, layer_key, linear_layers
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import get_task
    from paligemma_cli.tasks.sources import load_examples

    model = load_for_inference(ModelConfig(model_path=str(merge_inputs["base"]), quantization="none",
                                           compute_dtype="fp32"), experts["models"][0])
    task = get_task("vqav2")
    examples = load_examples(task, DataConfig(data_root=experts["sets"][0][1]), "train")
    batches = calibration_batches(task, examples, load_processor(str(merge_inputs["base"])), model, 3)
    layers = linear_layers(model)
    q = layer_key("model.language_model.layers.1.self_attn.q_proj")
    fc = layer_key("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1")  # a checkpoint spelling
    assert q in layers and fc in layers and not any("lm_head" in k or "base_layer" in k for k in layers)
    grams = collect_grams(model, batches, {q: layers[q], fc: layers[fc]})
    for key in (q, fc):
        x = _layer_inputs(model, batches, layers[key])
        assert torch.allclose(grams[key].double(), x.T @ x, rtol=1e-4, atol=1e-3)


def test_pgm_merge_regmean_of_two_adapters_equals_the_spec(merge_inputs, experts, tmp_path):
    """Independent implementation: each expert (base + its adapter, unquantised) on its own
    calibration batches, inputs captured by plain hooks, W* solved in float64 here."""
    from paligemma_cli.config import DataConfig, ModelConfig
    from paligemma_cli.merge.calibrate import calibration_batches
    from paligemma_cli.merge.driver import merge
    from paligemma_cli.merge.request import MergeRequest
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import get_task
    from paligemma_cli.tasks.sources import load_examples

    base = merge_inputs["base"]
    out = tmp_path / "rm"
    result = merge(MergeRequest(base_model=str(base), models=tuple(str(m) for m in experts["models"]), mode="regmean",
                                calibrate=tuple(f"{t}={root}" for t, root in experts["sets"]),
                                calibration_samples=6, regmean_alpha=0.8, output=out))
    merged = load_file(out / "model.safetensors")
    recipe = json.loads((out / "pgm_merge.json").read_text())
    assert recipe["regmean_alpha"] == 0.8 and recipe["calibration_examples"] == [6, 6]
    assert recipe["calibrate"] == [f"{t}={root}" for t, root in experts["sets"]] and result.method == "regmean"

    processor = load_processor(str(base))
    name = "language_model.layers.1.mlp.down_proj"
    weights, grams = [], []
    for adapter, (task_name, root) in zip(experts["models"], experts["sets"]):
        model = load_for_inference(ModelConfig(model_path=str(base), quantization="none", compute_dtype="fp32"), adapter)
        task = get_task(task_name)
        examples = load_examples(task, DataConfig(data_root=root, max_train_samples=6), "train")
        module = model.get_submodule(f"base_model.model.model.{name}")
        x = _layer_inputs(model, calibration_batches(task, examples, processor, model, 4), module)
        grams.append(x.T @ x)
        weights.append(model.merge_and_unload().get_submodule(f"model.{name}").weight.double())
    shrunk = [0.8 * g + 0.2 * torch.diag(torch.diagonal(g)) for g in grams]
    expected = torch.linalg.solve(sum(shrunk), sum(w @ g for w, g in zip(weights, shrunk)).T).T
    key = next(k for k in merged if k.endswith("layers.1.mlp.down_proj.weight"))
    assert torch.allclose(merged[key].double(), expected, atol=2e-5)
    base_weights = load_file(Path(base) / "model.safetensors")
    norm = next(k for k in merged if k.endswith("layers.1.post_attention_layernorm.weight"))
    assert torch.equal(merged[norm], base_weights[norm])  # untouched by both adapters


def test_regmean_of_full_models_uses_every_linear_layer(merge_inputs, synthetic_data, tmp_path):
    from paligemma_cli.merge.driver import merge
    from paligemma_cli.merge.request import MergeRequest

    models = (merge_inputs["noisy_1"], merge_inputs["noisy_2"])
    merge(MergeRequest(base_model=str(merge_inputs["base"]), models=tuple(map(str, models)), mode="regmean",
                       calibrate=(f"vqav2={synthetic_data('vqav2', 8)}", f"gqa={synthetic_data('gqa', 8)}"),
                       calibration_samples=4, output=tmp_path / "rm"))
    merged = load_file(tmp_path / "rm" / "model.safetensors")
    inputs = [load_file(m / "model.safetensors") for m in models]
    fc1 = next(k for k in merged if "vision" in k and k.endswith("layers.0.mlp.fc1.weight"))
    embed = next(k for k in merged if k.endswith("embed_tokens.weight"))
    mean = (inputs[0][embed].double() + inputs[1][embed].double()) / 2
    assert torch.allclose(merged[embed].double(), mean, atol=1e-6)  # no Gram: the plain mean
    # a linear layer is not the mean: the Gram matrices weigh the experts
    plain = (inputs[0][fc1] + inputs[1][fc1]) / 2
    assert not torch.allclose(merged[fc1], plain, atol=1e-4) and torch.isfinite(merged[fc1]).all()
