"""A tiny, randomly initialised PaliGemma that pgm builds offline.

Real checkpoints come from the hub, which tests, CI and `make demo` cannot reach. This model has
the real architecture (SigLIP + projector + Gemma / Gemma 2), a real (small) BPE tokenizer trained
here with Gemma's conventions, and the real `PaliGemmaProcessor`, so every code path that loads,
quantises, trains, generates, saves and merges runs on it unchanged. Sizes follow FACTS.md:
hidden sizes are multiples of 64 so bitsandbytes' CPU 4-bit kernels accept every layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from paligemma_cli.outputs import pgm_home

TINY_NAMES = {"tiny": "gemma", "tiny-pg2": "gemma2"}
TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
_VERSION = "v3"  # bump when the recipe changes so stale caches are rebuilt


def tiny_cache_dir() -> Path:
    return pgm_home()


def is_tiny(model_path: str) -> bool:
    return str(model_path) in TINY_NAMES


def build_tokenizer(vocab_size: int | None = None):
    """Train a small byte-fallback BPE on the synthetic world's words, wrapped as a GemmaTokenizer.

    `vocab_size` pads the vocabulary with `<unusedN>` entries (as Gemma's own has) up to that many
    tokens: a tokenizer as large as a real checkpoint's (256,000 before PaliGemma's <image>, <loc>
    and <seg> tokens) in a second, without training a BPE that large. BPE never emits the padding.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from paligemma_cli.data.synthetic import VOCABULARY_TEXT

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    # Train within words only (merges never span "▁"), so every answer word is one or two tokens.
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials + byte_tokens,
                                  show_progress=False, min_frequency=1)
    # Each word repeated with a leading space, as Gemma sees words mid-sentence.
    corpus = [" " + w for w in VOCABULARY_TEXT.split()] * 4 + [VOCABULARY_TEXT]
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = bpe.to_str()
    import json

    model = json.loads(state)["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab = dict(model["vocab"])
    base = len(vocab)
    vocab.update({f"<unused{i}>": base + i for i in range(max(0, (vocab_size or 0) - base))})
    return GemmaTokenizer(vocab=vocab, merges=merges)


def build_processor(image_size: int = TINY_IMAGE_SIZE, patch: int = TINY_PATCH,
                    vocab_size: int | None = None):
    """The real `PaliGemmaProcessor` (SigLIP preprocessing at `image_size` px, (image_size /
    patch)^2 image tokens) around `build_tokenizer(vocab_size)`; it adds <image>, <loc>, <seg>."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = (image_size // patch) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(vocab_size))


def build_tiny(out_dir: Path, variant: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny PaliGemma (model + processor) to `out_dir` with `save_pretrained`."""
    import torch
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    processor = build_processor()
    vocab = -(-len(processor.tokenizer) // 64) * 64
    text_kwargs = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=vocab,
                       max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if TINY_NAMES[variant] == "gemma2":
        from transformers import Gemma2Config

        text_config = Gemma2Config(**text_kwargs, sliding_window=256)
    else:
        text_config = GemmaConfig(**text_kwargs)
    vision_config = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=TINY_IMAGE_SIZE,
                                       patch_size=TINY_PATCH, vision_use_head=False)
    config = PaliGemmaConfig(vision_config=vision_config, text_config=text_config,
                             projection_dim=64,
                             image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"))
    config.text_config.vocab_size = vocab
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    # lm_head is untied and drawn wider than the default 0.02: with a frozen random lm_head and
    # unit-RMS final states, std 0.02 caps every logit near 1, so no LoRA could make an answer
    # likely; wider tied embeddings would instead drown the image tokens in the residual stream.
    # Real checkpoints have trained embeddings; this keeps the tiny one learnable.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.25)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def ensure_tiny(variant: str = "tiny") -> Path:
    """The cached tiny model for `variant` ('tiny' or 'tiny-pg2'), built on first use (~2 s)."""
    target = tiny_cache_dir() / f"{variant}-{_VERSION}"
    if (target / "config.json").exists() and (target / "processor_config.json").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    build_tiny(tmp, variant)
    try:
        tmp.rename(target)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def config_from_spec(spec: dict):
    """(PaliGemmaConfig, processor) for `spec`, a config.json-shaped dict as
    `engine.presets.preset_config` returns: the processor at the spec's image size, its tokenizer
    padded so that <image>, 1024 <loc> and 128 <seg> end inside the spec's vocabulary."""
    from transformers import Gemma2Config, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    text, vision = dict(spec["text_config"]), dict(spec["vision_config"])
    vocab = text["vocab_size"]
    # The padded vocabulary ends with <image>, 1024 <loc> and 128 <seg>, then up to 63 spare rows.
    processor = build_processor(vision["image_size"], vision["patch_size"], (vocab - 1024 - 128 - 1) // 64 * 64)
    if len(processor.tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(processor.tokenizer)} tokens, more than vocab_size {vocab}")
    text_cls = Gemma2Config if text.pop("model_type", "gemma") == "gemma2" else GemmaConfig
    text_config = text_cls(**text, max_position_embeddings=8192, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision.pop("model_type", None)
    tokens = vision.pop("num_image_tokens", (vision["image_size"] // vision["patch_size"]) ** 2)
    config = PaliGemmaConfig(vision_config=SiglipVisionConfig(**vision), text_config=text_config,
                             projection_dim=spec.get("projection_dim", text["hidden_size"]),
                             image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"))
    config.text_config.num_image_tokens = tokens
    config.text_config.vocab_size = vocab
    tied = bool(spec.get("tie_word_embeddings", True))
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = tied
    return config, processor


def build_from_config(spec: dict, out_dir: Path, *, device: str = "cpu", seed: int = 0) -> Path:
    """Write a randomly initialised PaliGemma shaped by `spec` (see `config_from_spec`): a real
    checkpoint's shapes, processor and vocabulary size with nothing downloaded.

    The weights are drawn on `device` in the spec's dtype (a 3B model draws in a second on a GPU,
    minutes on a CPU) and saved as safetensors, so `engine.model.load_model` loads and quantises
    them exactly as it does a downloaded checkpoint.
    """
    import torch
    from transformers import PaliGemmaForConditionalGeneration

    config, processor = config_from_spec(spec)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(spec.get("torch_dtype"), torch.float32)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # drawn in the checkpoint's dtype: no fp32 copy of 3B weights
    try:
        with torch.device(device):
            model = PaliGemmaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
