"""Small matplotlib pictures for asset metadata (rendered headless)."""
from __future__ import annotations

import io
from itertools import islice
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .data import iter_latents, iter_pixels  # noqa: E402


def line_plot(x, y, path: Path, title: str, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
              ylim: tuple[float, float] | None = None) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(x, y, lw=2)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latent_preview(latents_dir: Path, images_dir: Path, n: int = 8) -> bytes:
    """PNG: held-out images over their latents, the three leading SVD channels shown as RGB (-2.5..2.5 std)."""
    latents = dict(islice(((k, z) for k, z, _ in iter_latents(latents_dir, "holdout")), n))
    images = {k: x for k, x, _ in iter_pixels(images_dir, "holdout") if k in latents}
    fig, axes = plt.subplots(2, len(latents), figsize=(1.1 * len(latents), 2.4), dpi=100, squeeze=False)
    for col, (key, z) in enumerate(latents.items()):
        rgb = np.zeros((3, *z.shape[1:]), np.float32)
        rgb[: min(3, len(z))] = z[:3]
        axes[0, col].imshow((images[key].transpose(1, 2, 0) + 1) / 2)
        axes[1, col].imshow(np.clip(rgb.transpose(1, 2, 0) / 5 + 0.5, 0, 1), interpolation="nearest")
        axes[0, col].set_title(key[-8:], fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
