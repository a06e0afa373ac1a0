"""The samples artifact's shards, ``samples-*.tar``: one sample per generated image, keyed by its index, with
``png`` (the image) and ``level_<l>.npy`` (each level's latent that produced it).

Read member by member: only the PNG (PIL) and the .npy members (no pickles) are decoded, as every shard reader of
this project does.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image

from .cache import listed_files
from .levels import decode_npy

PATTERN = "samples-%06d.tar"  # ShardWriter's pattern
GLOB = "samples-*.tar"


def sample_shards(samples_dir: Path) -> list[str]:
    return [str(p) for p in listed_files(samples_dir, GLOB)]


def raw_samples(samples_dir: Path):
    """The undecoded samples (dicts of bytes), for readers that decode members themselves."""
    shards = sample_shards(samples_dir)
    return wds.WebDataset(shards, shardshuffle=False, empty_check=False) if shards else []


def sample_images(samples_dir: Path) -> Iterator[np.ndarray]:
    """Each generated image as a (1, H, W, 3) uint8 batch, in sample order."""
    for s in raw_samples(samples_dir):
        yield np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))[None]


def sample_latents(samples_dir: Path, levels) -> dict[int, np.ndarray]:
    """The generated latents of `levels`, each (N, c_l, s_l, s_l), in sample order."""
    rows = list(raw_samples(samples_dir))
    out = {}
    for level in levels:
        name = f"level_{level}.npy"
        zs = [decode_npy(r[name], name) for r in rows]
        for r, z in zip(rows, zs):
            if z.shape != zs[0].shape:
                raise ValueError(f"{r['__url__']}: sample {r['__key__']!r}: {name} has shape {z.shape}, the first "
                                 f"sample's {zs[0].shape}")
        out[level] = np.stack(zs)
    return out
