"""RegMean's calibration: per expert, the Gram matrix G = sum x x^T of every linear layer's inputs
while the expert runs on its own task's examples.

Inputs come from the same examples, prompts and collation as training (the task's train split,
its first N examples, image + prompt + answer through `TrainCollator`), one forward pass per
batch with no gradients. Forward hooks on the linear layers (plain, bitsandbytes or PEFT LoRA
wrappers: the hook sees the layer's input x either way) add x^T x in float32 on the model's
device; padded positions (attention mask 0) of the language model's rows are left out.

Memory: a layer's Gram is in x in floats (16384^2 x 4 B = 1 GB for a PaliGemma-3B down_proj), so
the layers are calibrated in groups whose Grams fit `memory_budget` bytes, one pass over the
examples per group, and each group's Grams go to a safetensors file (`GramStore`) that the merge
reads per tensor. The tiny model and a 3B model's attention layers fit one pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

PEFT_PREFIX = "base_model.model."
DEFAULT_BUDGET = 2 << 30  # bytes of Gram matrices held at once


def layer_key(name: str) -> str:
    """One spelling for a linear layer's weight, whether it comes from a module of a (PEFT-wrapped)
    model or from the merge's tensor names (which keep the checkpoint's `vision_model.` level)."""
    name = name.removeprefix(PEFT_PREFIX).replace(".vision_model.", ".")
    return name if name.endswith(".weight") else name + ".weight"


def linear_layers(model, wanted: Callable[[str], bool] | None = None) -> dict[str, torch.nn.Module]:
    """layer_key -> the module whose input is the layer's x: nn.Linear and its bitsandbytes
    subclasses, or PEFT's LoRA wrapper (not the base_layer inside it); lm_head is the tied
    embedding, not a layer to merge."""
    layers = {}
    for name, module in model.named_modules():
        if name.endswith(".base_layer") or name.endswith("lm_head"):
            continue
        is_linear = isinstance(module, torch.nn.Linear) and not hasattr(module, "base_layer")
        is_lora = isinstance(getattr(module, "base_layer", None), torch.nn.Linear)
        if (is_linear or is_lora) and (wanted is None or wanted(layer_key(name))):
            layers[layer_key(name)] = module
    return layers


def _groups(layers: dict[str, torch.nn.Module], budget: int) -> list[list[str]]:
    groups, current, used = [], [], 0
    for key, module in layers.items():
        size = _in_features(module) ** 2 * 4
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(key)
        used += size
    return groups + ([current] if current else [])


def _in_features(module: torch.nn.Module) -> int:
    return getattr(module, "in_features", None) or module.base_layer.in_features


def collect_grams(model, batches: Callable[[], Iterable[dict]], layers: dict[str, torch.nn.Module],
                  on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """One pass of `batches()` (model-ready dicts) through `model`: layer_key -> float32 Gram."""
    grams: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor | None] = [None]

    def hook(key):
        def add(_module, args):
            x = args[0]
            if mask[0] is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask[0].shape):
                x = x[mask[0].to(x.device).bool()]  # the language model's real (unpadded) tokens
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            gram = x.T @ x
            grams[key] = gram if key not in grams else grams[key].add_(gram)
        return add

    handles = [module.register_forward_pre_hook(hook(key)) for key, module in layers.items()]
    try:
        with torch.no_grad():
            for batch in batches():
                mask[0] = batch.get("attention_mask")
                model(**{k: v for k, v in batch.items() if k != "labels"})
                if on_batch:
                    on_batch(int(batch["input_ids"].shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return grams


class GramStore:
    """One expert's Gram matrices on disk (a safetensors file per calibration group), read per layer."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files: dict[str, Path] = {}

    @classmethod
    def open(cls, folder: Path) -> "GramStore":
        """The Grams an earlier run stored in `folder`."""
        from safetensors import safe_open

        store = cls(folder)
        for path in sorted(Path(folder).glob("grams-*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                store.files.update({k: path for k in f.keys()})
        return store

    def add(self, grams: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self.folder / f"grams-{len(set(self.files.values()))}.safetensors"
        self.folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in grams.items()}, str(path))
        self.files.update({k: path for k in grams})

    def get(self, name: str) -> torch.Tensor | None:
        from safetensors import safe_open

        key = layer_key(name)
        path = self.files.get(key)
        if path is None:
            return None
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(key)


def calibration_batches(task, examples: Sequence, processor, model, batch_size: int) -> Callable[[], Iterable[dict]]:
    """Training-style batches (image + prompt + answer) of `examples`, on the model's device."""
    from paligemma_cli.model.batches import TrainCollator, TrainingSet, to_device
    from paligemma_cli.model.loader import check_batch

    items = TrainingSet(task, examples, seed=0)
    collate = TrainCollator(processor, task.max_length)

    def batches():
        for start in range(0, len(items), batch_size):
            batch = collate([items[i] for i in range(start, min(start + batch_size, len(items)))])
            check_batch(batch)
            yield to_device(batch, model)
    return batches


def calibrate(model, batches: Callable[[], Iterable[dict]], store: GramStore, *,
              wanted: Callable[[str], bool] | None = None, budget: int = DEFAULT_BUDGET,
              on_pass: Callable[[int, int], None] | None = None) -> None:
    """All of `model`'s linear layers (those `wanted` keeps), a group of layers per pass."""
    layers = linear_layers(model, wanted)
    groups = _groups(layers, budget)
    for i, group in enumerate(groups):
        if on_pass:
            on_pass(i, len(groups))
        store.add(collect_grams(model, batches, {k: layers[k] for k in group}))


def regmean_side_inputs(job, sets: Sequence[tuple[str, Path]], base_folder: Path, workdir: Path, *,
                        samples: int, batch_size: int = 8, budget: int = DEFAULT_BUDGET, events=None):
    """Calibrate each input of `job` on its (task, data root) of `sets` (in --model order) and
    return the job's `side_inputs`: tensor name -> RegMeanGrams (None where no expert has a Gram).

    Each expert runs unquantised in float32 (its layer inputs as exact as the Grams that sum them):
    the base plus its adapter, or its own folder; it is freed before the next loads."""
    import gc

    from paligemma_cli.config import DataConfig, ModelConfig
    from paligemma_cli.merge.regmean import RegMeanGrams
    from paligemma_cli.merge.sources import FullModel
    from paligemma_cli.model.load import load_for_inference, load_processor
    from paligemma_cli.tasks import get_task
    from paligemma_cli.tasks.sources import load_examples

    processor = load_processor(str(base_folder))
    stores = []
    for i, (src, (task_name, root)) in enumerate(zip(job.inputs, sets)):
        task = get_task(task_name)
        examples = load_examples(task, DataConfig(task=task.name, data_root=root, max_train_samples=samples), "train")
        if events:
            events.phase_start(f"RegMean: calibrating model {i + 1} on {len(examples)} {task.name} examples")
        exact = {"quantization": "none", "compute_dtype": "fp32"}
        if isinstance(src, FullModel):
            model, wanted = load_for_inference(ModelConfig(model_path=str(src.folder), **exact)), None
        else:
            model = load_for_inference(ModelConfig(model_path=str(base_folder), **exact), src.folder)
            targets = {layer_key(m) for m in src.modules}
            wanted = targets.__contains__
        store = GramStore(Path(workdir) / f"model-{i}")
        calibrate(model, calibration_batches(task, examples, processor, model, batch_size), store,
                  wanted=wanted, budget=budget)
        stores.append((store, len(examples)))
        if events:
            events.phase_end(f"{len(store.files)} layers")
        del model
        gc.collect()
    alpha = job.params.regmean_alpha

    def side(name: str):
        grams = [store.get(name) for store, _ in stores]
        return None if all(g is None for g in grams) else RegMeanGrams(grams, alpha)
    side.samples = [n for _, n in stores]  # recorded in pgm_merge.json
    return side
