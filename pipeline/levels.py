"""Semantic level latents (level_kinds.SemanticLevel): pool the features to s_l x s_l, keep the top c_l SVD channels, standardize.

Written as WebDataset shards (``train-*.tar``, ``holdout-*.tar``), one sample per image keyed by its manifest
id: ``latent.npy`` (c_l, s_l, s_l) float32 and ``cls``. The standardization statistics come from the training
split only and are stored in ``stats.safetensors``.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import webdataset as wds
from safetensors.numpy import load_file, save_file

from .cache import listed_files
from .features import iter_rows
from .stats import ChannelStats

STATS = "stats.safetensors"


def kl_capacity_bits(second_moment: np.ndarray, sigma: float, positions: int) -> float:
    """Bits per image that z_hat = z + sigma * eps can carry: KL(N(z, sigma^2) || N(0, 1)) summed over dims.

    Per dimension KL = (sigma^2 + z^2 - 1 - ln sigma^2) / 2 nats; averaged over the data z^2 -> E[z^2] of each
    channel (1 after standardization). sigma = 0 leaves the latent uncompressed: infinite capacity.
    """
    if sigma <= 0:
        return math.inf
    nats = 0.5 * (sigma**2 + np.asarray(second_moment, dtype=np.float64) - 1.0 - math.log(sigma**2))
    return float(positions * nats.sum() / math.log(2))


def _centered_pool(block: np.ndarray, basis: dict, pool: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(block)).permute(0, 3, 1, 2)
    return torch.nn.functional.adaptive_avg_pool2d(x, pool) - torch.from_numpy(basis["mean"]).view(1, -1, 1, 1)


def project(block: np.ndarray, basis: dict, pool: int, channels: int, centered: torch.Tensor | None = None) -> torch.Tensor:
    """(B, h, w, C) features -> (B, c, s, s) coordinates in the leading SVD axes (not yet standardized)."""
    x = _centered_pool(block, basis, pool) if centered is None else centered
    return torch.einsum("bchw,kc->bkhw", x, torch.from_numpy(basis["components"][:channels]))


def _pooled_stats(features, basis, train_rows, pool, channels):
    stats, total_sq = ChannelStats(), 0.0
    for _, block in iter_rows(features, train_rows):
        centered = _centered_pool(block, basis, pool)
        stats.update(project(block, basis, pool, channels, centered).double())
        total_sq += centered.square().sum(dtype=torch.float64).item()  # no float64 copy of the block
    var = stats.var()
    total_var = total_sq / stats.n  # centered on the basis mean, which is the pooled features' mean too
    return stats.mean(), var.clamp_min(1e-12).sqrt(), float(var.sum() / max(total_var, 1e-12))


def build_latents(features, basis: dict, manifest: pa.Table, pool: int, channels: int, shard_size: int,
                  out_dir: Path) -> dict:
    """Every image's latent into shards (module docstring); `manifest`: the images' id, label and split columns, in
    the features' row order. Per image, only a bit and a label are held; the ids are read block by block."""
    train = pc.equal(manifest["split"], "train").to_numpy(zero_copy_only=False)
    labels = manifest["label"].to_numpy()
    mu, std, kept = _pooled_stats(features, basis, np.flatnonzero(train), pool, channels)
    train_stats = ChannelStats()  # of the standardized training latents (~0 and ~1 when all went well)

    def samples():
        for idx, block in iter_rows(features):
            z = ((project(block, basis, pool, channels).double() - mu.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).float()
            in_train = torch.from_numpy(train[idx])
            if in_train.any():
                train_stats.update(z[in_train])
            ids = manifest["id"].slice(int(idx[0]), len(idx)).to_pylist()  # iter_rows' blocks are contiguous rows
            for i, key, zi in zip(idx, ids, z.numpy()):
                yield ("train" if train[i] else "holdout"), key, zi, int(labels[i])

    counts = write_shards(out_dir, samples(), shard_size)
    zeros = torch.zeros(channels, dtype=torch.float64)
    mean = (train_stats.mean() if train_stats.n else zeros).numpy()
    second_moment = (train_stats.second_moment() if train_stats.n else zeros).numpy()
    save_file({"mean": mu.float().numpy(), "std": std.float().numpy(), "second_moment": second_moment.astype(np.float32)},
              str(out_dir / STATS))
    return {"shape": [pool, pool, channels], "layout": "latent.npy is (c, s, s) float32",
            "variance_kept": round(kept, 4), "counts": counts,
            "train_channel_mean_abs_max": float(np.abs(mean).max()),
            "train_channel_std_min": float(np.sqrt(second_moment - mean ** 2).min()),
            "train_channel_std_max": float(np.sqrt(second_moment - mean ** 2).max()),
            "second_moment": [float(v) for v in second_moment]}


def write_shards(out_dir: Path, samples, shard_size: int) -> dict[str, int]:
    """Write (split, key, latent, label) samples into ``train-*.tar`` / ``holdout-*.tar``; the count per split."""
    writers = {s: wds.ShardWriter(str(out_dir / f"{s}-%06d.tar"), maxcount=shard_size, verbose=0)
               for s in ("train", "holdout")}
    counts = {"train": 0, "holdout": 0}
    try:
        for split, key, z, label in samples:
            writers[split].write({"__key__": key, "latent.npy": z, "cls": int(label)})
            counts[split] += 1
    finally:
        for w in writers.values():
            w.close()
    for s, c in counts.items():  # ShardWriter leaves an empty first tar when a split has no samples
        if c == 0:
            for f in out_dir.glob(f"{s}-*.tar"):
                f.unlink()
    return counts


def load_stats(latents_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(latents_dir / STATS))


def latent_shards(latents_dir: Path, split: str = "train") -> list[str]:
    return [str(p) for p in listed_files(latents_dir, f"{split}-*.tar")]


def every_shard(urls):
    """Node splitter for torchrun: every process reads every shard (each holds the small set and draws its own batches)."""
    return urls


def decode_npy(raw: bytes, what: str = "latent.npy") -> np.ndarray:
    """A .npy member, refusing pickled (object) arrays: np.load(allow_pickle=False) raises on them."""
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{what}: refused to load ({e})") from None


def decode_cls(raw: bytes) -> int:
    return int(raw.decode("ascii").strip())


def iter_latent_samples(latents_dir: Path, split: str = "train") -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, (c, s, s) float32, label) of each sample of a split: the one reader of latent shards.

    Only ``latent.npy`` (no pickles) and ``cls`` (an int) are read; every other member is ignored, never
    decoded: webdataset's default decoders unpickle ``.pyd`` and torch.load ``.pth`` members, so a planted
    member would run code in whoever reads the shard.
    """
    shards = latent_shards(latents_dir, split)
    if not shards:
        return
    shape = None
    for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False, nodesplitter=every_shard):
        if "latent.npy" not in s or "cls" not in s:
            raise ValueError(f"{s.get('__url__')}: sample {s['__key__']!r} lacks latent.npy or cls")
        z = decode_npy(s["latent.npy"])
        shape = z.shape if shape is None else shape
        if z.shape != shape or z.ndim != 3:  # named here, not as np.stack's "all input arrays must have the same shape"
            raise ValueError(f"{s['__url__']}: sample {s['__key__']!r}: latent.npy has shape {z.shape}; the split's "
                             f"latents are (c, s, s){f' = {shape}' if z.ndim == 3 else ''}")
        yield s["__key__"], z, decode_cls(s["cls"])


def read_latents(latents_dir: Path, split: str = "train") -> tuple[list[str], np.ndarray, np.ndarray]:
    """All latents of a split in memory (keys, (N, c, s, s), labels): for tests and small sets."""
    keys, zs, ys = [], [], []
    for key, z, y in iter_latent_samples(latents_dir, split):
        keys.append(key)
        zs.append(z)
        ys.append(y)
    return keys, np.stack(zs) if zs else np.zeros((0,)), np.asarray(ys)
