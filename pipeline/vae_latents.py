"""Level 0 in an AutoencoderKL's latent space (the paper: SD's VAE): the `level_0_latents` stage and the VAE itself.

The stage encodes every ingested image once, in batches on `compute.device`, and writes the scaled latent means
as WebDataset shards keyed by manifest id (``train-*.tar`` / ``holdout-*.tar``, as every level's latents), in
float16: the round trip's largest error is recorded in the metadata (about 1e-3 of a unit-scale latent, far
below what the diffusion model resolves). Training, the pixel levels built on level 0, the neighbours and
lineage read these shards; nothing re-encodes the training set.

The VAE is loaded once per process and device (`load_vae`), however many batches are encoded or decoded.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from safetensors.numpy import save_file

from models.weights import checkpoint_sha256

from .cache import stable_hash
from .data import iter_pixels
from .levels import STATS, write_shards
from .runtime import resolve_device
from .schema import Config
from .stats import ChannelStats

STORED_DTYPE = np.float16
SPLITS = ("train", "holdout")


def vae_identity(vae: str) -> str:
    """What the VAE is, for fingerprints: a local diffusers folder by its files' content, a hub id as spelled."""
    folder = Path(vae)
    if not folder.is_dir():
        return vae
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return stable_hash({str(p.relative_to(folder)): checkpoint_sha256(str(p)) for p in files})


@functools.lru_cache(maxsize=2)
def load_vae(vae: str, device: str) -> torch.nn.Module:
    """The AutoencoderKL of `vae` (a local directory or a hub id) on `device`, once per process."""
    from diffusers import AutoencoderKL  # optional until a config uses a VAE; slow to import

    return AutoencoderKL.from_pretrained(vae).eval().requires_grad_(False).to(device)


@torch.inference_mode()
def encode_vae(pixels: torch.Tensor, vae: str, scale: float, batch_size: int = 32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled AutoencoderKL latent means (the SD convention: z = scale * mean), on the CPU."""
    model = load_vae(vae, str(device))
    return torch.cat([(model.encode(pixels[i:i + batch_size].to(device)).latent_dist.mean * scale).float().cpu()
                      for i in range(0, len(pixels), batch_size)])


@torch.inference_mode()
def decode_vae(z: torch.Tensor, vae: str, scale: float, batch_size: int = 32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The inverse of encode_vae: scaled latents -> pixels in [-1, 1], on z's device."""
    model = load_vae(vae, str(device))
    return torch.cat([model.decode(z[i:i + batch_size].to(device) / scale).sample.float().to(z.device)
                      for i in range(0, len(z), batch_size)])


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


def _batches(images_dir: Path, split: str, size: int) -> Iterator[tuple[list[str], np.ndarray, list[int]]]:
    keys, xs, ys = [], [], []
    for key, x, y in iter_pixels(images_dir, split):
        keys.append(key)
        xs.append(x)
        ys.append(y)
        if len(keys) == size:
            yield keys, np.stack(xs), ys
            keys, xs, ys = [], [], []
    if keys:
        yield keys, np.stack(xs), ys


def build_vae_latents(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The level_0_latents stage: every ingested image's VAE latent, encoded batch by batch on the device."""
    began = time.perf_counter()
    images_dir, l0 = plan["images"].artifact.require(), cfg.level0
    device = resolve_device(cfg.compute.device)
    batch_size = cfg.encoder.batch_size  # a frozen encoder's batch, as the features stage's
    train_stats, worst = ChannelStats(), 0.0

    def samples():
        nonlocal worst
        for split in SPLITS:  # one pass per split over the shards: only that split's PNGs are decoded
            for keys, x, labels in _batches(images_dir, split, batch_size):
                z = encode_vae(torch.from_numpy(x), l0.vae, l0.vae_scale, batch_size, device)
                stored = z.numpy().astype(STORED_DTYPE)
                if not np.isfinite(stored).all():
                    raise ValueError(f"level_0_latents: VAE latents of {keys[0]}.. overflow float16 (|z| > 65504): "
                                     f"check level0.vae_scale ({l0.vae_scale}) and the VAE")
                worst = max(worst, float(np.abs(stored.astype(np.float32) - z.numpy()).max()))
                if split == "train":
                    train_stats.update(z)
                yield from ((split, k, zi, label) for k, zi, label in zip(keys, stored, labels))

    counts = write_shards(out_dir, samples(), cfg.dataset.shard_size)
    if not counts["train"]:
        raise ValueError(f"level_0_latents: no training images in {images_dir}")
    mean, var = train_stats.mean(), train_stats.var().clamp_min(0)
    save_file({"mean": mean.float().numpy(), "std": var.sqrt().float().numpy(),
               "second_moment": train_stats.second_moment().float().numpy()}, str(out_dir / STATS))
    seconds = time.perf_counter() - began
    n = counts["train"] + counts["holdout"]
    log(f"level_0_latents: {n} images -> {vae_shape(l0.vae, cfg.dataset.resolution)} latents on {device} "
        f"({n / seconds:.1f} img/s); float16 round trip within {worst:.2e}")
    return {"shape": list(vae_shape(l0.vae, cfg.dataset.resolution)), "counts": counts, "vae": l0.vae,
            "vae_scale": l0.vae_scale, "layout": "latent.npy is (c, h, w) float16 (scaled latent means)",
            "stored_dtype": "float16", "float16_max_abs_error": worst,
            "train_channel_mean": [round(float(v), 4) for v in mean],
            "train_channel_std": [round(float(v), 4) for v in var.sqrt()],
            "train_abs_max": train_stats.abs_max, "device": str(device), "precision": "float32",
            "images_per_s": round(n / seconds, 2), "seconds": round(seconds, 1)}
