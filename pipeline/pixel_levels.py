"""Pixel levels: a downsampled copy of level 0 as level 1, the other two hierarchy families of the seeds.

A level of kind `pixel_base` or `cascade` is level 0's data (pixels, or the VAE latent) area-averaged to
pool x pool, standardized per channel on the training split like every latent, written in the same shards:
checks, neighbours, variations and the UI read it as they read a semantic level. The two kinds differ only in
what level 0 learns over it:

- `cascade` (Ho et al. 2021, cascaded diffusion): level 0 generates the full image, conditioned on the low-res one
  (with the level's sigma noise: conditioning augmentation).
- `pixel_base` (MSF): level 0 generates the residual x - up(base), the high frequencies the base lacks, scaled to
  unit std; sampling adds the generated base back. The residual is easier to model, so it may take fewer
  sampling steps (`sampling.level_steps`).

Both kinds share the level-1 latents and model (the base generator is the same network): only level 0 differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.numpy import save_file

from models.uvit import to_grid

from .levels import STATS, write_shards
from .schema import Config
from .stats import ChannelStats

def downsample(x: torch.Tensor, pool: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, pool, pool): each cell the mean of its block (area downsampling)."""
    return to_grid(x, (pool, pool))


def upsample(base: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return to_grid(base, tuple(size))  # bilinear when growing, as the conditions reach the denoisers


def standardize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = (torch.as_tensor(np.asarray(v), dtype=torch.float64).view(1, -1, 1, 1) for v in (mean, std))
    return ((x.double() - m) / s).float()


def destandardize(z: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = (torch.as_tensor(np.asarray(v), dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
    return z.float() * s + m


def build_pixel_latents(cfg: Config, level: int, data: dict[str, tuple], out_dir: Path,
                        log: Callable[[str], None] = print) -> dict:
    """The latents stage of a pixel level: level 0's data of every split (`data`: split -> (keys, x, labels)),
    area-averaged and standardized."""
    lv = cfg.level(level)
    channels = data["train"][1].shape[1]
    if channels != lv.channels:
        raise ValueError(f"levels[{level - 1}].channels: {lv.channels}, but level 0 has {channels} channels: a "
                         f"{lv.kind} level is level 0 downsampled, so it has level 0's channels")
    base = {split: downsample(x, lv.pool).double() for split, (_, x, _) in data.items()}
    raw = ChannelStats()
    raw.update(base["train"])
    mean, std = raw.mean(), raw.var().clamp_min(1e-12).sqrt()
    z = {split: standardize(b, mean.numpy(), std.numpy()) for split, b in base.items()}
    counts = write_shards(out_dir, ((split, key, zi, label) for split, (keys, _, labels) in data.items()
                                    for key, zi, label in zip(keys, z[split].numpy(), labels.tolist())),
                          cfg.dataset.shard_size)
    x = data["train"][1].double()
    residual = x - upsample(base["train"], x.shape[-2:])
    kept = 1 - float(residual.var() / x.var().clamp_min(1e-12))  # of level 0's variance, what the base carries
    train = ChannelStats()
    train.update(z["train"])
    tm, second = train.mean().numpy(), train.second_moment().numpy()
    save_file({"mean": mean.float().numpy(), "std": std.float().numpy(), "second_moment": second.astype(np.float32)},
              str(out_dir / STATS))
    log(f"level {level} ({lv.kind}): level 0 area-averaged to {lv.pool}x{lv.pool}, {kept:.1%} of its variance kept")
    return {"shape": [lv.pool, lv.pool, channels], "layout": "latent.npy is (c, s, s) float32", "kind": lv.kind,
            "variance_kept": round(kept, 4), "counts": counts,
            "train_channel_mean_abs_max": float(np.abs(tm).max()),
            "train_channel_std_min": float(np.sqrt(second - tm ** 2).min()),
            "train_channel_std_max": float(np.sqrt(second - tm ** 2).max()),
            "second_moment": [float(v) for v in second]}


def residual_target(x: torch.Tensor, base: torch.Tensor, stats: dict, scale: float | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Level 0's MSF target from its data x and the standardized base: ((x - up(base)) / scale, how to undo it).

    scale is the residual's std over the training set, so the denoiser sees a unit-scale target as on every
    other level (given `scale`, that one: the holdout split uses the training set's); sampling reads it back
    from model.json."""
    up = upsample(destandardize(base, stats["mean"], stats["std"]), x.shape[-2:])
    r = x.float() - up
    scale = float(r.std().clamp_min(1e-6)) if scale is None else scale
    return r / scale, {"level": 1, "scale": scale, "mean": [float(v) for v in stats["mean"]],
                       "std": [float(v) for v in stats["std"]]}


def add_base(r: torch.Tensor, base: torch.Tensor, residual: dict) -> torch.Tensor:
    """The inverse of residual_target: level 0's data from a sampled residual and the (clean) base it was over."""
    return r * residual["scale"] + upsample(destandardize(base, residual["mean"], residual["std"]), r.shape[-2:])
