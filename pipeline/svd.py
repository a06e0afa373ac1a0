"""SVD basis of the training features' channels, fitted from a streamed covariance.

Every spatial position of every training image is one C-dimensional sample. Only the C x C sums are held
in memory (float64), never the N*h*w x C matrix. One basis serves every level: pooling and projection are
both linear, so a level keeps its leading c_l components of this basis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .features import iter_rows, open_features
from .ingest import read_manifest
from .plots import line_plot
from .schema import Config

BASIS = "basis.safetensors"


class CovarianceAccumulator:
    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, x: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, x.shape[-1]))).double()
        self.n += t.shape[0]
        self.sum += t.sum(0)
        self.gram += t.T @ t

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n < 2:
            raise ValueError("need at least 2 feature vectors to fit an SVD basis")
        mean = self.sum / self.n
        cov = (self.gram - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, cov


def fit_basis(blocks, dim: int) -> dict[str, np.ndarray]:
    """Principal axes of the streamed blocks (..., dim): the right singular vectors of the centered data."""
    acc = CovarianceAccumulator(dim)
    for block in blocks:
        acc.update(block)
    mean, cov = acc.mean_cov()
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    # Fix each axis's sign (largest |loading| positive) so refits give identical latents, not mirrored ones.
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * signs
    total = evals.sum()
    return {
        "mean": mean.float().numpy(),
        "components": evecs.T.contiguous().float().numpy(),  # (C, C): row k is the k-th axis
        "singular_values": (evals * (acc.n - 1)).sqrt().float().numpy(),
        "explained_variance": evals.float().numpy(),
        "explained_variance_ratio": (evals / total if total > 0 else evals).float().numpy(),
        "num_samples": np.array([acc.n], dtype=np.int64),
    }


def build_basis(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The svd stage: the basis of the training split's features (the manifest says which rows those are)."""
    splits = np.asarray(read_manifest(plan["images"].artifact.require()).column("split").to_pylist())
    return fit_svd(open_features(plan["encoder_features"].artifact.require()), np.flatnonzero(splits == "train"), out_dir)


def fit_svd(features, train_rows: np.ndarray, out_dir: Path) -> dict:
    c = features.shape[-1]
    basis = fit_basis((block for _, block in iter_rows(features, train_rows)), c)
    save_file(basis, str(out_dir / BASIS))
    ratio = np.cumsum(basis["explained_variance_ratio"])
    line_plot(np.arange(1, c + 1), ratio, out_dir / "explained_variance.png", "Explained variance of the encoder features",
              "SVD channels kept", "share of variance", logx=True, ylim=(0, 1.01))
    marks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k <= c]
    return {"channels": c, "num_samples": int(basis["num_samples"][0]), "train_images": int(len(train_rows)),
            "cumulative_explained_variance": {str(k): round(float(ratio[k - 1]), 4) for k in marks},
            "plot": "explained_variance.png"}


def load_basis(svd_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(svd_dir / BASIS))
