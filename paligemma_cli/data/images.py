"""Opening an example's image: a file path or a loader (hub data sets), decoded when a batch needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from paligemma_cli.errors import PgmError


def open_image(ref: Path | Callable[[], Any]):
    """The example's image as RGB PIL (decoded now, not before)."""
    from PIL import Image

    try:
        img = Image.open(ref) if isinstance(ref, Path) else ref()
        if img is None:
            raise OSError("no image")
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise PgmError(f"Cannot read image {ref}: {exc}.",
                       "Re-download or remove it (without --skip-image-check, pgm train finds every such "
                       "file before the first step).") from None
