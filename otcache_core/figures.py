"""Small raster figures (numpy + Pillow): schedule strips, readable at a glance.

Kept free of plotting libraries: the same images serve the ComfyUI preview output (an IMAGE tensor)
and the demo's PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .schedule import Schedule

COMPUTED = (32, 96, 200)
REUSED = (222, 226, 232)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def schedule_strips(rows: Sequence[tuple[str, Schedule]], *, cell: int = 10, gap: int = 1,
                    row_height: int = 18, min_width: int = 320) -> np.ndarray:
    """One strip per schedule: a cell per step, filled where the step is computed.

    Each row is labelled with its name and ``B/T``; a step ruler (every 5 steps) runs along the top.
    Returns an ``H x W x 3`` uint8 array.
    """
    if not rows:
        raise ValueError("no schedules to draw")
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{name}  {s.budget}/{s.steps}" for name, s in rows]
    label_w = max(_text_width(probe, text, font) for text in labels) + 10
    steps = max(s.steps for _, s in rows)
    pitch = cell + gap
    width = max(min_width, label_w + steps * pitch + 10)
    ruler = 14
    height = ruler + len(rows) * (row_height + 4) + 6
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for k in range(0, steps, 5):
        x = label_w + k * pitch
        draw.text((x, 1), str(k), fill=TEXT, font=font)
    for r, (text, (_, schedule)) in enumerate(zip(labels, rows)):
        top = ruler + r * (row_height + 4) + 3
        draw.text((4, top + (row_height - 11) // 2), text, fill=TEXT, font=font)
        computed = set(schedule.compute_steps)
        for k in range(schedule.steps):
            x = label_w + k * pitch
            color = COMPUTED if k in computed else REUSED
            draw.rectangle([x, top, x + cell - 1, top + row_height - 1], fill=color)
    return np.asarray(image, dtype=np.uint8)


def stack_vertically(images: Sequence[np.ndarray], *, pad: int = 6) -> np.ndarray:
    """Stack images (H x W x 3 uint8) top to bottom on white, left-aligned."""
    width = max(im.shape[1] for im in images)
    height = sum(im.shape[0] for im in images) + pad * (len(images) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for im in images:
        out[y : y + im.shape[0], : im.shape[1]] = im
        y += im.shape[0] + pad
    return out


def text_block(lines: Sequence[str], *, width: int | None = None) -> np.ndarray:
    """Lines of text as an image (for captions inside figures)."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    w = width or max(_text_width(probe, line, font) for line in lines) + 8
    image = Image.new("RGB", (w, 14 * len(lines) + 4), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((4, 2 + 14 * i), line, fill=TEXT, font=font)
    return np.asarray(image, dtype=np.uint8)
