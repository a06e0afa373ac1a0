"""Reference statistics of the real images and the evaluation of a sample set against them.

Both use the same Inception features (clean-fid's "clean" resizing; the packaged FID Inception, or the file
sampling.inception_weights names): FID from the feature means and covariances, precision/recall (k = 3) and
each sample's distance to its nearest training image from the features themselves.

A run's evaluation (`evaluate_run`) scores the samples asset's images, then samples again with the next
`sampling.eval_seeds - 1` seeds (FID moves by several points with the seed alone at a few hundred samples), and,
for a nested run, samples level 0 from the held-out images' real coarser latents (the oracle: what the latent
models can reach at best). Its row goes into the artifact; the table of evaluations is pipeline/table.py's.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .costs import cost_table
from .data import iter_pixels
from .fingerprints import config_fingerprint
from .levels import read_latents
from .metrics import (InceptionFeatures, feature_stats, fid_from_features, inception_features,
                      nearest_neighbour_distances, precision_recall, shared_inception)
from .sample import decode_level0, iter_hierarchy, to_uint8
from .sample_shards import sample_images
from .schema import EVAL_K, Config
from .stage import Stage

REFERENCE = "reference.safetensors"


def _pixels_uint8(images_dir: Path, split: str, limit: int | None):
    for i, (_, x, _) in enumerate(iter_pixels(images_dir, split)):
        if limit is not None and i >= limit:
            return
        yield to_uint8(torch.from_numpy(x)[None])


def build_reference(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The reference stage: Inception features, mean and covariance of the training images (at most
    sampling.reference_images), and the held-out images' features (the real-data floor)."""
    began = time.perf_counter()
    images_dir = plan["images"].artifact.require()
    model = shared_inception(cfg.sampling.inception_weights)  # loaded once for both splits
    train = inception_features(_pixels_uint8(images_dir, "train", cfg.sampling.reference_images), model=model)
    holdout = inception_features(_pixels_uint8(images_dir, "holdout", None), model=model)
    mu, sigma = feature_stats(train)
    save_file({"train": train, "holdout": holdout, "mu": mu, "sigma": sigma}, str(out_dir / REFERENCE))
    floor = fid_from_features(holdout, train) if len(holdout) > 1 else None
    log(f"reference: {len(train)} train and {len(holdout)} held-out images; real-data FID floor {floor}")
    return {"num_reference": len(train), "num_holdout": len(holdout), "fid_floor": floor,
            "seconds": round(time.perf_counter() - began, 1)}


def evaluate_samples(samples_dir: Path, reference_dir: Path, out_dir: Path, k: int = EVAL_K,
                     weights: Path | None = None, model: InceptionFeatures | None = None) -> dict:
    ref = load_file(str(Path(reference_dir) / REFERENCE))
    began = time.perf_counter()
    feats = inception_features(sample_images(samples_dir), model=model, weights=weights)
    np.save(out_dir / "sample_features.npy", feats)
    pr = precision_recall(ref["train"], feats, k=k)
    nn = nearest_neighbour_distances(feats, ref["train"])
    return {"fid": fid_from_features(feats, ref["train"]), "precision": pr["precision"], "recall": pr["recall"],
            "nn_distance_mean": float(nn.mean()), "nn_distance_min": float(nn.min()), "num_samples": len(feats),
            "seconds": round(time.perf_counter() - began, 1)}


def sampled_features(cfg: Config, plan: dict[str, Stage], seed: int, model: InceptionFeatures,
                     given: dict[int, torch.Tensor] | None = None, labels: torch.Tensor | None = None) -> np.ndarray:
    """Inception features of a fresh top-down sample set (N images; as many as `given` holds when given)."""
    n = len(next(iter(given.values()))) if given else cfg.sampling.num_samples
    batches = (to_uint8(decode_level0(cfg, gen[0])) for gen in iter_hierarchy(cfg, plan, n, seed, given=given,
                                                                                  labels=labels))
    return inception_features(batches, model=model)


class SampleSetFeatures:
    """An engine's worker: the Inception features of further sample sets, each (seed, given, labels)."""

    def __init__(self, cfg: Config, plan: dict[str, Stage]):
        self.cfg, self.plan = cfg, plan
        self.model = shared_inception(cfg.sampling.inception_weights)

    def __call__(self, sample_set: tuple) -> np.ndarray:
        seed, given, labels = sample_set
        return sampled_features(self.cfg, self.plan, seed, self.model, given, labels)


def oracle_conditions(cfg: Config, plan: dict[str, Stage], n: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The first n held-out images' real latents of every coarser level, and their labels."""
    given, labels = {}, None
    for level in range(1, cfg.num_levels):
        _, z, y = read_latents(plan[f"level_{level}_latents"].artifact.require(), "holdout")
        given[level], labels = torch.from_numpy(z[:n]), torch.from_numpy(y[:n]).long()
    return given, labels if cfg.class_conditional else None


def oracle_ladder(given: dict[int, torch.Tensor]) -> dict[int, dict[int, torch.Tensor]]:
    """The partial oracles between the full oracle and the run: {k: the real latents of the levels >= k only}, from
    the coarsest level down to level 2 (k = 1 would be the full oracle). Sampled with each, the levels below k are
    generated from real coarser ones: the FID's steps from k to k - 1 tell which level's generator costs what."""
    top = max(given, default=0)
    return {k: {level: z for level, z in given.items() if level >= k} for k in range(top, 1, -1)}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def evaluate_run(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print, *,
                 engine, variant: str = "") -> dict:
    """The evaluation stage: the samples' FID and more (module docstring), and the run's row of the table
    (`variant`: the sweep variant's name, "" for the experiment itself)."""
    began = time.perf_counter()
    sc, stage = cfg.sampling, plan["evaluation"]
    samples, reference = plan["samples"].artifact.require(), plan["reference_stats"].artifact.require()
    model = shared_inception(sc.inception_weights)  # loaded once for every seed and the oracle
    meta = evaluate_samples(samples, reference, out_dir, model=model)
    ref = load_file(str(reference / REFERENCE))
    seeds = [sc.seed + i for i in range(sc.eval_seeds)]
    # Every further sample set (the other seeds; the oracle's, from the held-out images' real coarser latents) is
    # independent of the others: the engine's workers sample and featurize them side by side.
    sets = [(seed, None, None) for seed in seeds[1:]]
    if sc.oracle and cfg.num_levels > 1:
        given, labels = oracle_conditions(cfg, plan, sc.num_samples)
        sets += [(seed, given, labels) for seed in seeds]
    feats = engine.map(SampleSetFeatures, {"cfg": cfg, "plan": plan}, sets) if sets else []
    fids, oracle = [meta["fid"]], []
    for (seed, g, _), f in zip(sets, feats):
        (oracle if g is not None else fids).append(fid_from_features(f, ref["train"]))
        log(f"oracle FID (level 0 from real coarser latents), seed {seed}: {oracle[-1]:.2f}" if g is not None
            else f"FID with sampling seed {seed}: {fids[-1]:.2f}")
    fid_mean, fid_std = _mean_std(fids)
    oracle_mean, oracle_std = _mean_std(oracle) if oracle else (None, None)
    ref_meta, sample_meta = plan["reference_stats"].artifact.metadata(), plan["samples"].artifact.metadata()
    meta.update(fid_seeds=fids, fid_mean=fid_mean, fid_std=fid_std, oracle_fid_seeds=oracle,
                seconds=round(time.perf_counter() - began, 1))
    meta["row"] = {
        "experiment": cfg.name, "variant": variant,
        "config_fingerprint": config_fingerprint(cfg, stage.artifact.home),
        "evaluation_fingerprint": stage.fingerprint, "L": cfg.num_levels,
        "sigmas": [lv.sigma for lv in cfg.levels], "guidance": cfg.guidance(), "conditional": cfg.class_conditional,
        "train_seed": cfg.training_seed, "sampler": sc.sampler, "steps": sc.steps, "num_samples": meta["num_samples"],
        "fid": meta["fid"], "seeds": seeds, "fid_seeds": fids, "fid_mean": fid_mean, "fid_std": fid_std,
        "oracle_fid": oracle_mean, "oracle_fid_std": oracle_std,
        "oracle_num_samples": len(next(iter(given.values()))) if oracle else None,
        "fid_floor": ref_meta["fid_floor"], "precision": meta["precision"],
        "recall": meta["recall"], "nn_distance_mean": meta["nn_distance_mean"],
        "gflops_per_image": cost_table(cfg)["sampling_gflops_per_image"],
        "wall_seconds": sample_meta["sample_seconds"] + meta["seconds"],
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return meta
