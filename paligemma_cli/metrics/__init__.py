"""Official evaluation metrics as pure functions, one module per family.

Importing this package is cheap: pycocoevalcap (and its Java tools) load only when
`caption_metrics` runs.
"""

from paligemma_cli.metrics.anls import anls, anls_score
from paligemma_cli.metrics.captioning import caption_metrics
from paligemma_cli.metrics.gqa import gqa_metrics
from paligemma_cli.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score

__all__ = [
    "anls",
    "anls_score",
    "caption_metrics",
    "gqa_metrics",
    "normalize_answer",
    "vqa_accuracy",
    "vqa_score",
]
