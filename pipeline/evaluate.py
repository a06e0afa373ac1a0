"""Reference statistics of the real images and the evaluation of a sample set against them.

Both use the same Inception features (clean-fid's "clean" resizing, the packaged FID Inception): FID from the
feature means and covariances, precision/recall (k = 3) and each sample's distance to its nearest training
image from the features themselves. Each evaluation appends one row to a Parquet table under $NESTED_HOME.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image
from safetensors.numpy import load_file, save_file

from .data import iter_pixels
from .sample import to_uint8
from .metrics import feature_stats, fid_from_features, inception_features, nearest_neighbour_distances, precision_recall

REFERENCE = "reference.safetensors"
TABLE = "evaluations.parquet"


def _pixels_uint8(images_dir: Path, split: str, limit: int | None):
    for i, (_, x, _) in enumerate(iter_pixels(images_dir, split)):
        if limit is not None and i >= limit:
            return
        yield to_uint8(torch.from_numpy(x)[None])


def build_reference(images_dir: Path, out_dir: Path, max_images: int | None = None, log=print) -> dict:
    """Inception features, mean and covariance of the training images (and of the held-out ones: the floor)."""
    began = time.perf_counter()
    train = inception_features(_pixels_uint8(images_dir, "train", max_images))
    holdout = inception_features(_pixels_uint8(images_dir, "holdout", None))
    mu, sigma = feature_stats(train)
    save_file({"train": train, "holdout": holdout, "mu": mu, "sigma": sigma}, str(out_dir / REFERENCE))
    floor = fid_from_features(holdout, train) if len(holdout) > 1 else None
    log(f"reference: {len(train)} train and {len(holdout)} held-out images; real-data FID floor {floor}")
    return {"num_reference": len(train), "num_holdout": len(holdout), "fid_floor": floor,
            "seconds": round(time.perf_counter() - began, 1)}


def sample_images(samples_dir: Path):
    shards = sorted(str(p) for p in Path(samples_dir).glob("samples-*.tar"))
    for s in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        yield np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))[None]


def evaluate_samples(samples_dir: Path, reference_dir: Path, out_dir: Path, k: int = 3) -> dict:
    ref = load_file(str(Path(reference_dir) / REFERENCE))
    began = time.perf_counter()
    feats = inception_features(sample_images(samples_dir))
    np.save(out_dir / "sample_features.npy", feats)
    pr = precision_recall(ref["train"], feats, k=k)
    nn = nearest_neighbour_distances(feats, ref["train"])
    return {"fid": fid_from_features(feats, ref["train"]), "precision": pr["precision"], "recall": pr["recall"],
            "nn_distance_mean": float(nn.mean()), "nn_distance_min": float(nn.min()), "num_samples": len(feats),
            "seconds": round(time.perf_counter() - began, 1)}


def append_row(home: Path, row: dict) -> Path:
    """Add one row to the evaluation table, atomically (written aside, then renamed over the old table)."""
    path = Path(home) / TABLE
    new = pa.Table.from_pylist([row])
    table = pa.concat_tables([pq.read_table(path), new], promote_options="permissive") if path.exists() else new
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)
    return path
