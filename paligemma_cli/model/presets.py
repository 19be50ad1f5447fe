"""Architecture presets of the public PaliGemma 1 and 2 checkpoints, as data.

`pgm memory-estimate --model-path google/paligemma-3b-pt-448` and `pgm doctor`'s disk check
need the model's shape without downloading it (the repos are gated). The numbers are those
of the checkpoints' `config.json` (the same ones transformers' conversion scripts write):
SigLIP So400m/14 as vision tower, Gemma 2B (PaliGemma 1) or Gemma 2 2B/9B/27B (PaliGemma 2) as
text model, a linear projector from 1152 to the text width. Only fields that shape parameters
or activations are kept; the dicts have config.json's layout so a local `config.json` and a
preset go through the same code.
"""

from __future__ import annotations

import re

SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                 "num_hidden_layers": 27, "num_attention_heads": 16, "patch_size": 14,
                 "num_channels": 3, "vision_use_head": False}
# Both generations pad Gemma's 256k vocabulary (+1024 <loc> + 128 <seg>) to a multiple of 64.
VOCAB = 257216
GEMMA_2B = {"model_type": "gemma", "hidden_size": 2048, "intermediate_size": 16384,
            "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
            "head_dim": 256, "vocab_size": VOCAB}
GEMMA2 = {
    "2b": {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256},
    "9b": {"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
           "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256},
    "27b": {"hidden_size": 4608, "intermediate_size": 36864, "num_hidden_layers": 46,
            "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128},
}
# model size in the repo name -> (text config, dtype of the hub's safetensors)
FAMILIES = {
    ("paligemma", "3b"): (GEMMA_2B, "float32"),
    ("paligemma2", "3b"): ({"model_type": "gemma2", "vocab_size": VOCAB,
                            "final_logit_softcapping": 30.0, **GEMMA2["2b"]}, "bfloat16"),
    ("paligemma2", "10b"): ({"model_type": "gemma2", "vocab_size": VOCAB,
                             "final_logit_softcapping": 30.0, **GEMMA2["9b"]}, "bfloat16"),
    ("paligemma2", "28b"): ({"model_type": "gemma2", "vocab_size": VOCAB,
                             "final_logit_softcapping": 30.0, **GEMMA2["27b"]}, "bfloat16"),
}
RESOLUTIONS = (224, 448, 896)
_ID = re.compile(r"^(?:google/)?(paligemma2?)-(3b|10b|28b)-([a-z0-9-]+?)-(224|448|896)$")


def preset_names() -> list[str]:
    """The pretrained checkpoints pgm knows by heart (mix / fine-tuned ids resolve too)."""
    return [f"google/{fam}-{size}-pt-{res}" for (fam, size) in FAMILIES for res in RESOLUTIONS]


def preset_config(model_id: str) -> dict | None:
    """A config.json-shaped dict for a public PaliGemma id, or None if pgm has no preset."""
    match = _ID.match(model_id.strip())
    if not match:
        return None
    family, size, _variant, res = match.groups()
    if (family, size) not in FAMILIES:
        return None
    text, dtype = FAMILIES[(family, size)]
    resolution = int(res)
    vision = {**SIGLIP_SO400M, "image_size": resolution,
              "num_image_tokens": (resolution // SIGLIP_SO400M["patch_size"]) ** 2}
    return {"model_type": "paligemma", "projection_dim": text["hidden_size"],
            "text_config": dict(text), "vision_config": vision, "tie_word_embeddings": True,
            "torch_dtype": dtype, "_preset": f"google/{family}-{size}-{_variant}-{res}"}
