"""`pgm memory-estimate --measure`: the peak memory of real training steps on this device.

CUDA: `torch.cuda.max_memory_allocated` / reserved over the steps. CPU (no GPU peak exists):
the tensors that stay resident (weights, LoRA, optimizer states) plus the allocation peak of
one step above them, read from the PyTorch profiler's memory timeline (process RSS growth if
that private API is unavailable). Weight storage is walked tensor by tensor, bitsandbytes
quant states included, for comparison with `memory.estimate(...).weights`.

The step is `pgm train`'s: the batch comes from its `TrainCollator`, the loss from
`model.loss.answer_loss` (logits for the answer positions only), then backward, gradient
clipping and the optimizer step; on CUDA with bf16 compute under the same autocast as
accelerate's mixed precision. `random_model` writes small random PaliGemmas of any shape, so the
activation coefficients of `diagnose.memory` can be re-fitted with `measure` (docs/memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from paligemma_cli.diagnose.memory import TrainSetup
from paligemma_cli.errors import PgmError


@dataclass(frozen=True)
class Measurement:
    device: str
    peak: int | None  # bytes: CUDA max allocated, or on CPU resident tensors + step allocation peak
    reserved: int | None
    weights: int  # storage of the loaded (quantised) weights, walked tensor by tensor
    seq_len: int
    answer_positions: int  # K: positions whose logits the loss asked for (model.loss)
    method: str


def tensor_storage(model) -> tuple[int, int]:
    """(bytes of all parameters incl. bitsandbytes quant states, of trainable ones); tied counted once."""
    import torch

    seen: set[int] = set()
    total = trainable = 0

    def add(t) -> int:
        if not torch.is_tensor(t) or t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return t.numel() * t.element_size()

    for p in model.parameters():
        n = add(p)
        total += n
        if p.requires_grad:
            trainable += n
        state = getattr(p, "quant_state", None)
        if state is not None:
            for t in (state.absmax, state.code, state.offset):
                total += add(t)
            if state.state2 is not None:
                total += add(state.state2.absmax) + add(state.state2.code)
        total += add(getattr(p, "SCB", None))
    return total, trainable


def measure(model_cfg, lora_cfg, setup: TrainSetup, steps: int = 3,
            on_step: Callable[[int], None] | None = None, max_grad_norm: float = 1.0) -> Measurement:
    """Run `steps` real training steps on the present device and report the peak memory."""
    import contextlib

    import torch

    from paligemma_cli.model.batches import to_device
    from paligemma_cli.model.loss import answer_loss, answer_positions
    from paligemma_cli.model.load import attach_lora, load_model, load_processor, resolve_compute_dtype

    base = load_model(model_cfg)
    weights, _ = tensor_storage(base)  # as loaded: what the estimate's weight rows describe
    model = attach_lora(base, model_cfg, lora_cfg)
    model.train()
    batch = to_device(synthetic_batch(load_processor(model_cfg.model_path, model_cfg.revision), setup), model)
    seq_len, keep = int(batch["input_ids"].shape[1]), answer_positions(batch["labels"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = trainable[0].device
    optimizer = _optimizer(setup.optimizer, trainable, device.type)
    # accelerate's mixed_precision="bf16", as train.loop turns it on (CUDA with bf16 compute only)
    bf16 = device.type == "cuda" and resolve_compute_dtype(model_cfg.compute_dtype) == torch.bfloat16

    def step() -> None:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = answer_loss(model, batch)
            loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for i in range(steps):
            step()
            if on_step:
                on_step(i + 1)
        return Measurement("cuda", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                           weights, seq_len, keep, "torch.cuda.max_memory_allocated")
    step()  # optimizer states now exist, as in every later step
    if on_step:
        on_step(1)
    resident = tensor_storage(model)[0] + _optimizer_state_bytes(optimizer)
    peak, method = _cpu_step_peak(step)
    for i in range(2, steps + 1):
        if on_step:
            on_step(i)
    return Measurement("cpu", None if peak is None else resident + peak, None, weights, seq_len, keep, method)


def _optimizer(name: str, params, device: str):
    import torch

    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    if device != "cuda":
        raise PgmError(f"--optimizer {name} needs a CUDA GPU (bitsandbytes 8-bit optimizers).",
                       "Measure with --optimizer adamw on CPU.")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
    return cls(params, lr=1e-4)


def _optimizer_state_bytes(optimizer) -> int:
    import torch

    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def _cpu_step_peak(step: Callable[[], None]) -> tuple[int | None, str]:
    """Peak bytes allocated during one step above what was live before it (CPU, torch.profiler)."""
    try:
        import numpy as np
        import torch
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline  # private, hence the fallback

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            step()
        _times, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        total = np.asarray(sizes).sum(axis=1)
        return int(total.max() - total[0]), "CPU: resident tensors + step allocation peak (torch.profiler)"
    except (ImportError, AttributeError, TypeError, RuntimeError, ValueError):  # private profiler API moved
        return _rss_step_peak(step)


def _rss_step_peak(step: Callable[[], None]) -> tuple[int | None, str]:
    import threading
    import time

    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    step()
    done.set()
    thread.join()
    return max(0, peak[0] - base), "CPU: resident tensors + process RSS growth during a step"


def synthetic_batch(processor, setup: TrainSetup) -> dict:
    """A training batch built by `pgm train`'s collator: about `max_length` text tokens per row, the
    answer sized so the loss keeps `setup.keep` positions (answer + EOS + 1)."""
    from PIL import Image

    from paligemma_cli.model.batches import TrainCollator

    size = processor.image_processor.size
    height, width = size.get("height", 224), size.get("width", 224)
    answer = max(1, setup.keep - 2)  # words ~ tokens; the answer's EOS and the +1 make K
    prompt = max(1, setup.max_length - answer - 5)  # BOS, "answer en", "\n", EOS around the words
    items = [{"image": Image.new("RGB", (width, height), (i * 37 % 255, 90, 160)),
              "prefix": "answer en " + " ".join(["what"] * prompt), "suffix": " ".join(["red"] * answer)}
             for i in range(setup.batch_size)]
    return TrainCollator(processor, setup.max_length)(items)


def random_model(out_dir, variant: str = "tiny", *, image_size: int | None = None, vocab_size: int | None = None,
                 text: dict | None = None, vision: dict | None = None, seed: int = 0):
    """A random PaliGemma shaped like `variant`'s tiny model with `text` / `vision` config overrides,
    `image_size` pixels (image tokens = (image_size / patch)^2) and `vocab_size` rows (>= the
    tokenizer's), written with its processor to `out_dir`: a model `measure` can load."""
    from pathlib import Path

    import torch
    from transformers import AutoConfig, AutoProcessor, PaliGemmaForConditionalGeneration

    from paligemma_cli.model.tiny import ensure_tiny

    source = ensure_tiny(variant)
    config = AutoConfig.from_pretrained(source)
    processor = AutoProcessor.from_pretrained(source)
    for key, value in (text or {}).items():
        setattr(config.text_config, key, value)
    for key, value in (vision or {}).items():
        setattr(config.vision_config, key, value)
    config.projection_dim = config.vision_config.projection_dim = config.text_config.hidden_size
    if vocab_size:
        config.text_config.vocab_size = vocab_size
    if image_size:
        config.vision_config.image_size = image_size
        processor.image_processor.size = {"height": image_size, "width": image_size}
    tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    processor.image_seq_length = processor.image_processor.image_seq_length = tokens
    config.text_config.num_image_tokens = tokens
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
