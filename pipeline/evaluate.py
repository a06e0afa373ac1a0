"""Reference statistics of the real images and the evaluation of a sample set against them.

Both use the same Inception features (clean-fid's "clean" resizing; the packaged FID Inception, or the file
sampling.inception_weights names): FID from the feature means and covariances, precision/recall (k = 3) and
each sample's distance to its nearest training image from the features themselves. The table of evaluations
is pipeline/table.py's.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from safetensors.numpy import load_file, save_file

from .data import iter_pixels
from .sample import to_uint8
from .metrics import (InceptionFeatures, feature_stats, fid_from_features, inception_features,
                      nearest_neighbour_distances, precision_recall)

REFERENCE = "reference.safetensors"


def _pixels_uint8(images_dir: Path, split: str, limit: int | None):
    for i, (_, x, _) in enumerate(iter_pixels(images_dir, split)):
        if limit is not None and i >= limit:
            return
        yield to_uint8(torch.from_numpy(x)[None])


def build_reference(images_dir: Path, out_dir: Path, max_images: int | None = None, log=print,
                    weights: Path | None = None) -> dict:
    """Inception features, mean and covariance of the training images (and of the held-out ones: the floor).
    weights: the Inception file (None: the packaged copy)."""
    began = time.perf_counter()
    model = InceptionFeatures(path=weights)  # loaded once for both splits
    train = inception_features(_pixels_uint8(images_dir, "train", max_images), model=model)
    holdout = inception_features(_pixels_uint8(images_dir, "holdout", None), model=model)
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


def evaluate_samples(samples_dir: Path, reference_dir: Path, out_dir: Path, k: int = 3,
                     weights: Path | None = None) -> dict:
    ref = load_file(str(Path(reference_dir) / REFERENCE))
    began = time.perf_counter()
    feats = inception_features(sample_images(samples_dir), weights=weights)
    np.save(out_dir / "sample_features.npy", feats)
    pr = precision_recall(ref["train"], feats, k=k)
    nn = nearest_neighbour_distances(feats, ref["train"])
    return {"fid": fid_from_features(feats, ref["train"]), "precision": pr["precision"], "recall": pr["recall"],
            "nn_distance_mean": float(nn.mean()), "nn_distance_min": float(nn.min()), "num_samples": len(feats),
            "seconds": round(time.perf_counter() - began, 1)}
