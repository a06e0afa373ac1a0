"""The readers of a level's data: level 0's images and a level's latents (a VAE level 0's among them,
pipeline/vae_latents.py), one sample at a time; pipeline/level_kinds.py assembles a level's training data from them.

Every level's shards are written in manifest order, so the streams of a target and of each condition are zipped
by position. Small sets (all of this project's defaults) are held in memory as tensors (`collect`); the readers
stream, so a larger set can be fed batch by batch instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from .features import decode_png
from .ingest import image_shards, level0_png
from .levels import every_shard, iter_latent_samples


def pixels_of(png: bytes) -> np.ndarray:
    """A level-0 PNG as the models see it: (3, H, W) float32 in [-1, 1]."""
    return decode_png(png).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def iter_pixels(images_dir: Path, split: str = "train") -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, (3, H, W) float32 in [-1, 1], label) of the level-0 images of a split."""
    for s in wds.WebDataset(image_shards(images_dir), shardshuffle=False, empty_check=False, nodesplitter=every_shard):
        if json.loads(s["json"])["split"] != split:
            continue
        yield s["__key__"], pixels_of(level0_png(s)), int(s["cls"])


def iter_latents(latents_dir: Path, split: str = "train") -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, (c, s, s) float32, label): only latent.npy (no pickles) and cls are decoded, nothing else."""
    yield from iter_latent_samples(latents_dir, split)


def collect(stream) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    keys, xs, ys = [], [], []
    for k, x, y in stream:
        keys.append(k)
        xs.append(x)
        ys.append(y)
    if not keys:
        raise ValueError("no training samples found")
    return keys, torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)
