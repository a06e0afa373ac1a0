"""Frozen-encoder feature maps of every ingested image, streamed batch by batch into a Zarr array (N, h, w, C).

Rows follow the manifest order. Only one batch of images and features is in memory at a time (on a distributed
engine, the chunks whose rows are still arriving).
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import webdataset as wds
import zarr
from PIL import Image
from tqdm import tqdm

from models.encoder import checkpoint_sha256, feature_extractor, load_encoder, probe_features

from .ingest import image_shards, read_manifest, source_png
from .runtime import resolve_device
from .schema import Config, EncoderConfig

FEATURES = "features.zarr"


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _decode(sample: dict) -> tuple[str, np.ndarray]:
    return sample["__key__"], decode_png(source_png(sample))


def image_batches(images_dir: Path, batch_size: int):
    """(keys, uint8 array N x H x W x 3) batches of the encoder-size images, in manifest order."""
    ds = wds.WebDataset(image_shards(images_dir), shardshuffle=False, empty_check=False).map(_decode)
    keys, arrays = [], []
    for key, arr in ds:
        keys.append(key)
        arrays.append(arr)
        if len(keys) == batch_size:
            yield keys, np.stack(arrays)
            keys, arrays = [], []
    if keys:
        yield keys, np.stack(arrays)


class Preprocess(torch.nn.Module):
    """uint8 NHWC -> normalized float NCHW at the encoder's input size."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.size = cfg.input_size
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().div_(255)
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic",
                                                align_corners=False, antialias=True).clamp_(0, 1)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def build_extractor(cfg: EncoderConfig) -> torch.nn.Module:
    model = load_encoder(cfg.name, cfg.weights, cfg.checkpoint_format)
    return feature_extractor(model, cfg.layer).to(memory_format=torch.channels_last).eval()


@torch.inference_mode()
def encoder_features(cfg: EncoderConfig, images: np.ndarray, device: torch.device, batch_size: int | None = None
                     ) -> torch.Tensor:
    """(N, h, w, C) float32 feature maps, on the CPU, of (N, H, W, 3) uint8 images outside the dataset, computed on
    `device` as the features stage computes them (same preprocessing and precision)."""
    extractor, pre, b = build_extractor(cfg).to(device), Preprocess(cfg).to(device), batch_size or cfg.batch_size
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
        return torch.cat([extractor(pre(torch.from_numpy(np.ascontiguousarray(images[i:i + b])).to(device))).float().cpu()
                          for i in range(0, len(images), b)])


def build_features(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print, *, engine) -> dict:
    """The features stage: the encoder's feature maps of every ingested image, here or spread by the engine."""
    images = plan["images"].artifact.require()
    if engine.distributed:
        return extract_features_spread(cfg.encoder, engine, images, out_dir, log=log, device=cfg.compute.device)
    return extract_features(cfg.encoder, images, out_dir, log=log, device=resolve_device(cfg.compute.device))


def extract_features(cfg: EncoderConfig, images_dir: Path, out_dir: Path, chunk_rows: int = 256,
                     log: Callable[[str], None] = print, device: torch.device = torch.device("cpu")) -> dict:
    ids = read_manifest(images_dir).column("id").to_pylist()
    n = len(ids)
    arr = create_feature_array(cfg, out_dir, n, chunk_rows)
    extractor = build_extractor(cfg).to(device)
    pre = Preprocess(cfg).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    row, pending, written = 0, [], 0
    # PNG decoding and Zarr writes run in a helper thread while the forward (which releases the GIL) computes;
    # writes cover whole chunks, so no chunk is decompressed and recompressed batch after batch.
    with ThreadPoolExecutor(1) as io_pool, torch.inference_mode(), autocast, \
            tqdm(total=n, desc="features", unit="img", mininterval=5) as bar:
        batches = image_batches(images_dir, cfg.batch_size)
        ahead = io_pool.submit(next, batches, None)
        write = None
        while (item := ahead.result()) is not None:
            keys, batch = item
            ahead = io_pool.submit(next, batches, None)
            if keys != ids[row:row + len(keys)]:
                raise RuntimeError(f"image shards and manifest disagree at row {row}: {keys[0]} vs {ids[row]}")
            pending.append(extractor(pre(torch.from_numpy(batch).to(device, non_blocking=True))).float().cpu().numpy())
            row += len(keys)
            bar.update(len(keys))
            if row - written >= arr.chunks[0] or row == n:
                block = np.concatenate(pending)
                cut = block.shape[0] if row == n else (row // arr.chunks[0]) * arr.chunks[0] - written
                if write is not None:
                    write.result()
                write = io_pool.submit(arr.__setitem__, slice(written, written + cut), block[:cut])
                pending, written = [block[cut:]] if cut < block.shape[0] else [], written + cut
        if write is not None:
            write.result()
    if row != n:
        raise RuntimeError(f"image shards hold {row} samples but the manifest lists {n}")
    return feature_metadata(cfg, arr, out_dir, log, device)


class Encode:
    """The encoder as an engine's worker: built once per worker (on its GPU if it was given one), then called on
    batches of undecoded samples ({"__key__": keys, and the PNG members: ingest.source_png)."""

    def __init__(self, cfg: EncoderConfig, device: str = "auto"):
        self.device = resolve_device(device)
        self.extractor = build_extractor(cfg).to(self.device)
        self.pre = Preprocess(cfg).to(self.device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

    def __call__(self, batch: dict) -> dict:
        x = torch.from_numpy(np.stack([decode_png(b) for b in source_png(batch)])).to(self.device)
        with torch.inference_mode(), self.autocast:
            feats = self.extractor(self.pre(x)).float().cpu().numpy()
        return {"__key__": batch["__key__"], "features": feats, "device": [str(self.device)] * len(feats)}


def extract_features_spread(cfg: EncoderConfig, engine, images_dir: Path, out_dir: Path, chunk_rows: int = 256,
                            log: Callable[[str], None] = print, device: str = "auto") -> dict:
    """extract_features with the encoder forward spread over the engine's workers (`map_shards`)."""
    ids = read_manifest(images_dir).column("id").to_pylist()
    row_of = {key: i for i, key in enumerate(ids)}
    arr = create_feature_array(cfg, out_dir, len(ids), chunk_rows)
    step = arr.chunks[0]
    # Batches arrive in any order: each chunk fills in a buffer and is written once, whole, when its last row lands.
    pending: dict[int, tuple[np.ndarray, int]] = {}
    devices = set()  # where the workers computed, as each resolved compute.device
    for batch in engine.map_shards([str(p) for p in image_shards(images_dir)], Encode, {"cfg": cfg, "device": device}, cfg.batch_size):
        devices.update(batch["device"])
        for key, feat in zip(batch["__key__"], batch["features"]):
            if key not in row_of:
                raise RuntimeError(f"image shards hold '{key}', which the manifest does not list")
            c, r = divmod(row_of.pop(key), step)
            size = min(step, len(ids) - c * step)
            buf, filled = pending.get(c) or (np.empty((size, *feat.shape), np.float32), 0)
            buf[r] = feat
            pending[c] = (buf, filled + 1)
            if filled + 1 == size:
                arr[c * step:c * step + size] = pending.pop(c)[0]
    if row_of or pending:
        raise RuntimeError(f"image shards miss {len(row_of)} of the manifest's {len(ids)} images")
    log(f"features on {engine.name}: {len(ids)} images through its encoder workers")
    return feature_metadata(cfg, arr, out_dir, log, ",".join(sorted(devices)))


def create_feature_array(cfg: EncoderConfig, out_dir: Path, n: int, chunk_rows: int = 256) -> zarr.Array:
    """The stage's empty Zarr array (N, h, w, C) with the encoder's provenance in its attributes."""
    h, w, c = probe_features(cfg.name, cfg.layer, cfg.input_size)
    attrs = {"encoder": cfg.name, "weights": cfg.weights, "checkpoint_sha256": checkpoint_sha256(cfg.weights),
             "layer": cfg.layer, "input_size": cfg.input_size, "mean": list(cfg.mean), "std": list(cfg.std),
             "dtype": cfg.dtype, "layout": "N h w C, rows in manifest order"}
    # Fill value NaN, not zero: a chunk missing from the store then reads as NaN and fails the `finite` check.
    return zarr.create_array(store=str(out_dir / FEATURES), shape=(n, h, w, c), chunks=(min(chunk_rows, n), h, w, c),
                             dtype="float32", fill_value=float("nan"),
                             compressors=[zarr.codecs.BloscCodec(cname="zstd", clevel=3)], attributes=attrs)


def feature_metadata(cfg: EncoderConfig, arr: zarr.Array, out_dir: Path, log: Callable[[str], None],
                     device) -> dict:
    log(f"features: {arr.shape[0]} images -> {arr.shape} in {out_dir / FEATURES} on {device} ({cfg.dtype})")
    return {"shape": list(arr.shape), "encoder": cfg.name, "layer": cfg.layer, "input_size": cfg.input_size,
            "checkpoint_sha256": arr.attrs["checkpoint_sha256"], "device": str(device), "precision": cfg.dtype,
            "bytes_on_disk": sum(f.stat().st_size for f in (out_dir / FEATURES).rglob("*") if f.is_file())}


def open_features(features_dir: Path) -> zarr.Array:
    return zarr.open_array(str(features_dir / FEATURES), mode="r")


def iter_rows(arr: zarr.Array, rows: np.ndarray | None = None, step: int | None = None):
    """Stream (row_indices, block) over the array chunk by chunk; `rows` selects a subset (sorted)."""
    step = step or arr.chunks[0]
    n = arr.shape[0]
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = arr[start:stop]
        idx = np.arange(start, stop)
        if rows is not None:
            keep = np.isin(idx, rows)
            if not keep.any():
                continue
            block, idx = block[keep], idx[keep]
        yield idx, block
