"""The training data of one level: its targets, the coarser latents that condition it, and labels.

Every level's shards are written in manifest order, so the streams of the target and of each condition are
zipped by position and checked to agree on keys. Small sets (all of this project's defaults) are held in
memory as tensors; the readers stream, so a larger set can be fed batch by batch instead.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from models.matryoshka import MATRYOSHKA_SIZES, pack

from .cache import Artifact, stable_hash
from .config import Config
from .ingest import image_shards
from .levels import every_shard, iter_latent_samples, load_stats
from .pixel_levels import residual_level, residual_target
from .plan import Stage


@dataclass
class LevelData:
    keys: list[str]
    x: torch.Tensor  # (N, C, H, W) targets: pixels in [-1, 1], a scaled VAE latent, or a standardized latent
    conds: list[torch.Tensor]  # each (N, c_k, s_k, s_k), clean (the training loop adds sigma_k noise)
    labels: torch.Tensor  # (N,) int64
    # Level 0 over an MSF base: x is the scaled residual, and this says how to undo it (pixel_levels.add_base)
    residual: dict | None = None
    # Level 0 under a matryoshka backbone: x is the extended state (every nested resolution, models/matryoshka.py)
    state: dict | None = None

    def __len__(self) -> int:
        return len(self.keys)


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


def _collect(stream) -> tuple[list[str], torch.Tensor, torch.Tensor]:
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


def vae_latents(cfg: Config, images: Stage, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Level-0 VAE latents of a split, encoded once and cached beside the images (same atomic artifacts)."""
    from safetensors.torch import load_file, save_file

    art = Artifact(images.artifact.home, "vae_latents",
                   stable_hash({"images": images.fingerprint, "vae": cfg.level0.vae, "scale": cfg.level0.vae_scale,
                                "split": split}))

    def build(out: Path) -> dict:
        keys, x, labels = _collect(iter_pixels(images.artifact.require(), split))
        save_file({"z": encode_vae(x, cfg.level0.vae, cfg.level0.vae_scale).contiguous(), "labels": labels},
                  str(out / "latents.safetensors"))
        return {"keys": keys}

    meta, _ = art.materialize(build)
    t = load_file(str(art.require() / "latents.safetensors"))
    return meta["keys"], t["z"], t["labels"]


def level0_data(cfg: Config, plan: dict[str, Stage], split: str = "train") -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, level 0's data (N, C, H, W): pixels in [-1, 1] or the scaled VAE latent, labels) of a split."""
    if cfg.level0.space == "vae":
        return vae_latents(cfg, plan["images"], split)
    return _collect(iter_pixels(plan["images"].artifact.require(), split))


def load_level_data(cfg: Config, plan: dict[str, Stage], level: int, split: str = "train") -> LevelData:
    if level == 0:
        keys, x, labels = level0_data(cfg, plan, split)
    else:
        keys, x, labels = _collect(iter_latents(plan[f"level_{level}_latents"].artifact.require(), split))
    conds = []
    for k in cfg.conditions_of(level):
        ckeys, c, _ = _collect(iter_latents(plan[f"level_{k}_latents"].artifact.require(), split))
        if ckeys != keys:
            raise ValueError(f"level {k} latents and level {level} targets disagree on keys (rebuild the latents)")
        conds.append(c)
    residual = None
    if level == 0 and (base := residual_level(cfg)) is not None:
        stats = load_stats(plan[f"level_{base}_latents"].artifact.require())
        scale = None
        if split != "train":  # the training set's scale, as the model was trained with
            _, xt, _ = level0_data(cfg, plan, "train")
            _, bt, _ = _collect(iter_latents(plan[f"level_{base}_latents"].artifact.require(), "train"))
            scale = residual_target(xt.float(), bt, stats)[1]["scale"]
        x, residual = residual_target(x.float(), conds[cfg.conditions_of(0).index(base)], stats, scale)
    state = None
    if level == 0 and (nest := matryoshka_nest(cfg)) is not None:
        state = {"nest": nest, "image_shape": list(x.shape[1:])}
        x = pack(x.float(), nest)
    return LevelData(keys, x.float(), conds, labels, residual, state)


def matryoshka_nest(cfg: Config) -> int | None:
    """How many nested resolutions level 0's matryoshka backbone denoises jointly (None: another backbone)."""
    tc = cfg.level0.train
    return MATRYOSHKA_SIZES[tc.size]["nest"] if tc.backbone == "matryoshka" else None
