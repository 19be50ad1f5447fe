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

TINY_NAMES = {"tiny": "gemma", "tiny-pg2": "gemma2"}
TINY_IMAGE_SIZE = 32
TINY_PATCH = 8
_VERSION = "v3"  # bump when the recipe changes so stale caches are rebuilt


def tiny_cache_dir() -> Path:
    root = os.environ.get("PGM_HOME") or Path.home() / ".cache" / "pgm"
    return Path(root)


def is_tiny(model_path: str) -> bool:
    return str(model_path) in TINY_NAMES


def build_tokenizer():
    """Train a small byte-fallback BPE on the synthetic world's words, wrapped as a GemmaTokenizer."""
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
    return GemmaTokenizer(vocab=model["vocab"], merges=merges)


def build_tiny(out_dir: Path, variant: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny PaliGemma (model + processor) to `out_dir` with `save_pretrained`."""
    import torch
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PaliGemmaProcessor, SiglipImageProcessor, SiglipVisionConfig)

    tokenizer = build_tokenizer()
    image_processor = SiglipImageProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
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
