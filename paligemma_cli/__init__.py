"""pgm: fine-tune PaliGemma with QLoRA, evaluate with the official metrics, merge the results."""

__version__ = "0.1.0"
