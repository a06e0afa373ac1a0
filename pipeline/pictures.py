"""Image grids that say what their rows and columns are: a title, column headers and row labels around the tiles.

Drawn with PIL and its built-in font (no font files, no network); tiles are upscaled without smoothing so that
16-pixel images stay legible.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD, LINE = 2, 12  # pixels between tiles; height of a line of the built-in font


def latent_tile(z: np.ndarray, size: int) -> np.ndarray:
    """(c, s, s) standardized latent -> (size, size, 3) uint8: its three leading SVD channels as RGB (+-2.5 std)."""
    rgb = np.zeros((3, *z.shape[1:]), np.float32)
    rgb[: min(3, len(z))] = z[:3]
    img = (np.clip(rgb / 5 + 0.5, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST))


def labelled_grid(rows: list[list[np.ndarray]], path: Path, title: str, columns: list[tuple[str, int]],
                  row_labels: list[str] | None = None, scale: int = 3) -> None:
    """Save rows of (H, W, 3) uint8 tiles as one PNG. `columns` labels spans of columns: [(label, how many), ...]."""
    font = ImageFont.load_default()
    h, w = rows[0][0].shape[:2]
    th, tw = h * scale, w * scale
    ncols = max(len(r) for r in rows)
    if sum(n for _, n in columns) != ncols:
        raise ValueError(f"column labels span {sum(n for _, n in columns)} columns, the rows have {ncols}")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = PAD + max((int(probe.textlength(t, font=font)) for t in row_labels or []), default=-PAD) + PAD
    top = 2 * LINE + 2 * PAD
    width = max(left + ncols * (tw + PAD) + PAD, int(probe.textlength(title, font=font)) + 2 * PAD)
    grid = Image.new("RGB", (width, top + len(rows) * (th + PAD) + PAD), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((PAD, PAD), title, fill="black", font=font)
    x = left
    for label, span in columns:
        width = span * (tw + PAD) - PAD
        draw.line([(x, top - 3), (x + width, top - 3)], fill="gray")
        draw.text((x, LINE + PAD), _fit_text(draw, label, width, font), fill="black", font=font)
        x += span * (tw + PAD)
    for r, tiles in enumerate(rows):
        y = top + r * (th + PAD)
        if row_labels:
            draw.text((PAD, y + th // 2 - LINE // 2), row_labels[r], fill="black", font=font)
        for c, tile in enumerate(tiles):
            img = Image.fromarray(np.ascontiguousarray(tile)).resize((tw, th), Image.Resampling.NEAREST)
            grid.paste(img, (left + c * (tw + PAD), y))
    grid.save(path)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text
