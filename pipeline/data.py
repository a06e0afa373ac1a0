"""The readers of a level's data: level 0's images (pixels, or their VAE latents, cached beside the images) and
a level's latents, one sample at a time; pipeline/level_kinds.py assembles a level's training data from them.

Every level's shards are written in manifest order, so the streams of a target and of each condition are zipped
by position. Small sets (all of this project's defaults) are held in memory as tensors (`collect`); the readers
stream, so a larger set can be fed batch by batch instead.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file, save_file

from .cache import Artifact, stable_hash
from .ingest import image_shards
from .levels import every_shard, iter_latent_samples
from .schema import Config
from .stage import Stage


def iter_pixels(images_dir: Path, split: str = "train") -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, (3, H, W) float32 in [-1, 1], label) of the level-0 images of a split."""
    for s in wds.WebDataset(image_shards(images_dir), shardshuffle=False, empty_check=False, nodesplitter=every_shard):
        if json.loads(s["json"])["split"] != split:
            continue
        img = np.asarray(Image.open(io.BytesIO(s["img.png"])).convert("RGB"), dtype=np.float32)
        yield s["__key__"], img.transpose(2, 0, 1) / 127.5 - 1.0, int(s["cls"])


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


def encode_vae(pixels: torch.Tensor, vae: str, scale: float, batch_size: int = 32) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled AutoencoderKL latent means (the SD convention: z = scale * mean)."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(vae).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            out.append(model.encode(pixels[i:i + batch_size]).latent_dist.mean * scale)
    return torch.cat(out)


def decode_vae(z: torch.Tensor, vae: str, scale: float, batch_size: int = 32) -> torch.Tensor:
    """The inverse of encode_vae: scaled latents -> pixels in [-1, 1]."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(vae).eval()
    with torch.inference_mode():
        return torch.cat([model.decode(z[i:i + batch_size] / scale).sample for i in range(0, len(z), batch_size)])


def vae_shape(vae: str, resolution: int) -> tuple[int, int, int]:
    """(channels, height, width) of the VAE latent of `resolution` px images: a local AutoencoderKL directory says
    its own; otherwise the SD VAE's (4 channels, 8x downsampling)."""
    try:
        from diffusers import AutoencoderKL

        vc = AutoencoderKL.load_config(vae)
        f = 2 ** (len(vc["block_out_channels"]) - 1)
        return (vc["latent_channels"], resolution // f, resolution // f)
    except (OSError, ValueError):
        return (4, resolution // 8, resolution // 8)


def vae_latents(cfg: Config, images: Stage, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Level-0 VAE latents of a split, encoded once and cached beside the images (same atomic artifacts)."""
    art = Artifact(images.artifact.home, "vae_latents",
                   stable_hash({"images": images.fingerprint, "vae": cfg.level0.vae, "scale": cfg.level0.vae_scale,
                                "split": split}))

    def build(out: Path) -> dict:
        keys, x, labels = collect(iter_pixels(images.artifact.require(), split))
        save_file({"z": encode_vae(x, cfg.level0.vae, cfg.level0.vae_scale).contiguous(), "labels": labels},
                  str(out / "latents.safetensors"))
        return {"keys": keys}

    meta, _ = art.materialize(build)
    t = load_file(str(art.require() / "latents.safetensors"))
    return meta["keys"], t["z"], t["labels"]
