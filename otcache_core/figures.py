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


def _concatenate(images: Sequence[np.ndarray], axis: int, pad: int) -> np.ndarray:
    """Images (H x W x 3 uint8) one after another along ``axis`` (0: down, 1: right) on white,
    ``pad`` pixels apart, aligned at the top-left corner of the other axis."""
    across = 1 - axis
    size = [0, 0]
    size[axis] = sum(im.shape[axis] for im in images) + pad * (len(images) - 1)
    size[across] = max(im.shape[across] for im in images)
    out = np.full((*size, 3), 255, dtype=np.uint8)
    offset = 0
    for im in images:
        start = [0, 0]
        start[axis] = offset
        out[start[0] : start[0] + im.shape[0], start[1] : start[1] + im.shape[1]] = im
        offset += im.shape[axis] + pad
    return out


def stack_vertically(images: Sequence[np.ndarray], *, pad: int = 6) -> np.ndarray:
    """Stack images (H x W x 3 uint8) top to bottom on white, left-aligned."""
    return _concatenate(images, 0, pad)


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


def heatmap(matrix: np.ndarray, *, cell: int = 6, title: str = "") -> np.ndarray:
    """An error matrix as an image: log-scaled, dark = large error, white = unmeasured (NaN).

    Row ``i`` (top to bottom) and column ``j`` (left to right) are graph nodes, so the upper triangle
    holds the measured segments ``i -> j``.
    """
    m = np.asarray(matrix, dtype=float)
    finite = m[np.isfinite(m) & (m > 0)]
    lo, hi = (np.log10(finite.min()), np.log10(finite.max())) if finite.size else (0.0, 1.0)
    span = max(hi - lo, 1e-9)
    level = np.where(np.isfinite(m) & (m > 0), (np.log10(np.where(m > 0, m, 1.0)) - lo) / span, np.nan)
    rgb = np.full(m.shape + (3,), 255, dtype=np.uint8)
    known = np.isfinite(level)
    # light yellow (small) -> dark red (large)
    low, high = np.array([255, 245, 200]), np.array([120, 0, 20])
    rgb[known] = (low + (high - low) * level[known][:, None]).astype(np.uint8)
    rgb[np.isfinite(m) & (m == 0)] = (235, 235, 235)
    image = np.kron(rgb, np.ones((cell, cell, 1), dtype=np.uint8))
    if title:
        caption = f"{title} (log scale, {10 ** lo:.2g} .. {10 ** hi:.2g})" if finite.size else title
        return stack_vertically([text_block([caption]), image], pad=2)
    return image


def line_plot(series: Sequence[tuple[str, Sequence[float], tuple[int, int, int]]], *, width: int = 360,
              height: int = 160, title: str = "", x_label: str = "", y_label: str = "") -> np.ndarray:
    """Simple line plot of one or more ``(name, values, color)`` series against their index."""
    font = _font()
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    values = [v for _, ys, _ in series for v in ys if np.isfinite(v)]
    if not values:
        draw.text((8, height // 2), "no data", fill=TEXT, font=font)
        return np.asarray(image, dtype=np.uint8)
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    n = max(len(ys) for _, ys, _ in series)
    left, right, top, bottom = 44, width - 8, 16, height - 18
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    for frac, value in ((0.0, lo), (1.0, hi)):
        y = bottom - frac * (bottom - top)
        draw.text((2, y - 6), f"{value:.3g}", fill=TEXT, font=font)
    draw.text((left, 2), title, fill=TEXT, font=font)
    draw.text((left, bottom + 3), x_label, fill=TEXT, font=font)
    if y_label:
        draw.text((right - _text_width(draw, y_label, font), 2), y_label, fill=TEXT, font=font)
    for row, (name, ys, color) in enumerate(series):
        pts = [
            (left + (i / max(1, n - 1)) * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top))
            for i, y in enumerate(ys)
            if np.isfinite(y)
        ]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        draw.text((left + 6, top + 2 + 12 * row), name, fill=color, font=font)
    return np.asarray(image, dtype=np.uint8)


def curve_plot(points: Sequence[tuple[float, float]], *, mark: tuple[float, float] | None = None, width: int = 360,
               height: int = 160, title: str = "", x_label: str = "", y_label: str = "",
               color: tuple[int, int, int] = (40, 90, 200)) -> np.ndarray:
    """A line through ``(x, y)`` points (x increasing to the right), with ``mark`` drawn as a red dot."""
    font = _font()
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    pts = [(x, y) for x, y in points if np.isfinite(x) and np.isfinite(y)]
    if not pts:
        draw.text((8, height // 2), "no data", fill=TEXT, font=font)
        return np.asarray(image, dtype=np.uint8)
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1.0
    y_lo, y_hi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1.0
    left, right, top, bottom = 44, width - 8, 16, height - 30

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left), bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    for value, frac in ((y_lo, 0.0), (y_hi, 1.0)):
        draw.text((2, bottom - frac * (bottom - top) - 6), f"{value:.3g}", fill=TEXT, font=font)
    for value in (x_lo, x_hi):
        draw.text((at(value, y_lo)[0] - 8, bottom + 2), f"{value:.3g}", fill=TEXT, font=font)
    draw.text((left, 2), title, fill=TEXT, font=font)
    draw.text((left + 30, bottom + 15), x_label, fill=TEXT, font=font)
    if y_label:
        draw.text((right - _text_width(draw, y_label, font), 2), y_label, fill=TEXT, font=font)
    line = [at(x, y) for x, y in sorted(pts)]
    if len(line) > 1:
        draw.line(line, fill=color, width=2)
    for x, y in line:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    if mark is not None and np.isfinite(mark[0]) and np.isfinite(mark[1]):
        x, y = at(min(max(mark[0], x_lo), x_hi), min(max(mark[1], y_lo), y_hi))
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(210, 30, 30))
    return np.asarray(image, dtype=np.uint8)


def side_by_side(images: Sequence[np.ndarray], *, pad: int = 8) -> np.ndarray:
    """Place images left to right on white, top-aligned."""
    return _concatenate(images, 1, pad)
