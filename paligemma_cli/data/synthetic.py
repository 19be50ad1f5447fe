"""A tiny world of coloured shapes, rendered to images, for demos and tests.

Each task file in `paligemma_cli.tasks` writes these scenes in its data set's official on-disk
format (`Task.write_synthetic`), so the real loaders read them exactly as they read the real data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
IMAGE_SIZE = 64

# Text the tiny tokenizer is trained on: every word the synthetic tasks use, so that answers are
# short token sequences (the byte fallback covers anything else).
VOCABULARY_TEXT = " ".join([
    "answer en caption en question what color is the shape which how many shapes are there",
    "is there a an of on in image picture background big small document total invoice date",
    "yes no it this that with and left right top bottom", " ".join(COLORS), " ".join(SHAPES),
    " ".join(BACKGROUNDS), " ".join(NUMBER_WORDS), " ".join(str(i) for i in range(100)),
    "circles squares triangles red-colored shape's", "ocr extract text from the page",
])


@dataclass(frozen=True)
class Scene:
    """One synthetic image: `count` shapes of one colour and kind on a background."""

    index: int
    color: str
    shape: str
    count: int
    background: str
    number: int  # a number printed on the 'document' variant (DocVQA)

    @property
    def caption(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{NUMBER_WORDS[self.count]} {self.color} {noun} on a {self.background} background"


def make_scenes(num: int, seed: int = 0) -> list[Scene]:
    """`num` reproducible scenes; the colour cycles so every colour appears evenly."""
    rng = random.Random(seed)
    colors = list(COLORS)
    scenes = []
    for i in range(num):
        scenes.append(Scene(
            index=i,
            color=colors[(i + seed) % len(colors)] if rng.random() < 0.5 else rng.choice(colors),
            shape=rng.choice(SHAPES),
            count=rng.randint(1, 3),
            background=rng.choice(list(BACKGROUNDS)),
            number=rng.randint(10, 99),
        ))
    return scenes


def render_scene(scene: Scene, size: int = IMAGE_SIZE):
    """Draw the scene as a PIL RGB image (shapes are large so a 32-pixel model still sees them)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    fill = COLORS[scene.color]
    cell = size // scene.count
    for k in range(scene.count):
        x0, y0 = k * cell + 2, (size - cell) // 2 + 2
        x1, y1 = x0 + cell - 4, y0 + cell - 4
        if scene.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif scene.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def render_document(scene: Scene, size: int = IMAGE_SIZE):
    """A 'document' page for DocVQA: a coloured header bar and the total printed as text."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, size, size // 4), fill=COLORS[scene.color])
    draw.text((4, size // 3), f"total {scene.number}", fill=(0, 0, 0))
    return img


def save_image(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
