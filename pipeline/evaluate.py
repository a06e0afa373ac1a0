"""Reference statistics of the real images and the evaluation of a sample set against them.

Both use the same Inception features (clean-fid's "clean" resizing; the packaged FID Inception, or the file
sampling.inception_weights names), computed on `compute.device`. The reference stage streams the training images'
features batch by batch into a float64 running mean and covariance and keeps, besides them, only a capped
deterministic subsample of the features (`sampling.pr_reference`, ADM's 50k: the rows whose keys hash first), so its
memory does not grow with the training set; the held-out images likewise (their statistics give the real-data
floor). Or the FID statistics come from an ADM-style .npz (`sampling.reference_npz`: `mu`, `sigma`, and `arr_0`,
images or activations, for precision/recall). The evaluation takes the FID from the stored mean and covariance,
and precision/recall (k = 3), KID and each sample's distance to its nearest training image from the subsample,
and, as a memorization figure, the fraction of samples nearer a training image than 5% of the held-out images are;
FID and KID against the held-out split as well (its statistics and subsample are kept by the reference stage).

A run's evaluation (`evaluate_run`) scores the samples asset's images, then samples again with the next
`sampling.eval_seeds - 1` seeds (FID moves by several points with the seed alone at a few hundred samples), and,
for a nested run, samples level 0 from the held-out images' real coarser latents (the oracle: what the latent
models can reach at best). Its row goes into the artifact; the table of evaluations is pipeline/table.py's.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from .costs import cost_table
from .data import iter_pixels
from .fingerprints import config_fingerprint
from .levels import read_latents
from .metrics import (FEATURE_DIM, NEAR_COPY_QUANTILE, InceptionFeatures, batch_features, feature_stats,
                      fid_from_stats, inception_features, inception_precision, kid, near_copies,
                      nearest_neighbour_distances, precision_recall, shared_inception)
from .progress import Progress
from .runtime import resolve_device
from .sample import decode_level0, iter_hierarchy, to_uint8
from .sample_shards import sample_images
from .schema import EVAL_K, Config
from .stage import Stage
from .stats import FeatureMoments, HashedSubsample

REFERENCE = "reference.safetensors"
FEATURE_BATCH = 64  # images per Inception call (a CPU forward runs them metrics.CPU_CHUNK at a time)


# -- the reference: streamed statistics and a capped subsample --------------------------------------------------

def keyed_pixels(images_dir: Path, split: str, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, uint8 H x W x 3) of a split's level-0 images, the first `limit` of them (None: all)."""
    for i, (key, x, _) in enumerate(iter_pixels(images_dir, split)):
        if limit is not None and i >= limit:
            return
        yield key, to_uint8(torch.from_numpy(x)[None])[0]


def _batches(stream: Iterable[tuple[str, object]], size: int) -> Iterator[tuple[list[str], list]]:
    keys, items = [], []
    for key, item in stream:
        keys.append(key)
        items.append(item)
        if len(keys) == size:
            yield keys, items
            keys, items = [], []
    if keys:
        yield keys, items


def featurized(stream: Iterable[tuple[str, np.ndarray]], model: InceptionFeatures,
               batch_size: int = FEATURE_BATCH) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, (n, 2048) float32 Inception features) of a stream of (key, uint8 image), a batch at a time."""
    for keys, images in _batches(stream, batch_size):
        yield keys, batch_features(images, model)


@dataclass
class FeatureSummary:
    """What the reference keeps of a split: its features' mean and covariance, and a capped subsample of them."""
    moments: FeatureMoments
    kept: HashedSubsample


def summarize(batches: Iterable[tuple[list[str], np.ndarray]], cap: int, dim: int = FEATURE_DIM,
              log: Callable[[str], None] | None = None, what: str = "", total: int | None = None) -> FeatureSummary:
    """One pass over (keys, features) batches: memory is one batch, d^2 floats and `cap` rows, whatever their number.
    `log`: progress lines (`total` images expected, when known)."""
    summary = FeatureSummary(FeatureMoments(dim), HashedSubsample(cap, dim))
    progress = Progress(log, f"reference ({what} split)", total) if log is not None else None
    for keys, feats in batches:
        summary.moments.update(feats)
        summary.kept.update(keys, feats)
        if progress is not None:
            progress.update(len(keys))
    return summary


def _npz_member_rows(path: Path, name: str, batch: int) -> Iterator[np.ndarray]:
    """The rows of array `name` of an .npz, `batch` at a time, read from the archive without loading the whole array
    (ADM's reference batches hold 10,000 images of 256 px)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise ValueError(f"{path}: {name} is a .npy of version {version}; 1.0 and 2.0 are read")
        shape, fortran, dtype = header[version](f)
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"{path}: {name} must be a C-ordered numeric array, got {dtype} {shape}")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch):
            n = min(batch, shape[0] - start)
            yield np.frombuffer(f.read(n * row_bytes), dtype).reshape((n, *shape[1:]))


def npz_statistics(path: Path, dim: int = FEATURE_DIM) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mu, sigma, whether arr_0 is there) of an ADM-style reference .npz, refused unless `dim`-d and finite."""
    with np.load(path, allow_pickle=False) as f:
        missing = {"mu", "sigma"} - set(f.files)
        if missing:
            raise ValueError(f"sampling.reference_npz: {path} has no {', '.join(sorted(missing))} (it has "
                             f"{', '.join(f.files)})")
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        has_activations = "arr_0" in f.files
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"sampling.reference_npz: mu {mu.shape} and sigma {sigma.shape} are not the statistics of "
                         f"{dim}-d features (the Inception's pool features)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"sampling.reference_npz: {path}: mu or sigma is not finite")
    return mu, sigma, has_activations


def npz_feature_batches(path: Path, model: InceptionFeatures) -> Iterator[tuple[list[str], np.ndarray]]:
    """(keys, features) of an .npz's arr_0: (N, 2048) activations as they are, or (N, H, W, 3) uint8 images (ADM's
    reference batches) through our Inception; keyed 'arr_0/<row>'."""
    dim = model.dim
    start = 0
    for rows in _npz_member_rows(path, "arr_0", FEATURE_BATCH):
        keys = [f"arr_0/{start + i}" for i in range(len(rows))]
        start += len(rows)
        if rows.ndim == 2 and rows.shape[1] == dim and rows.dtype.kind == "f":
            yield keys, rows.astype(np.float32)
        elif rows.ndim == 4 and rows.shape[3] == 3 and rows.dtype == np.uint8:
            yield keys, batch_features(list(rows), model)
        else:
            raise ValueError(f"sampling.reference_npz: arr_0 {rows.dtype} {rows.shape[1:]} is neither (N, {dim}) "
                             "activations nor (N, H, W, 3) uint8 images")


def build_reference(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The reference stage (module docstring): the FID statistics (the training images', at most
    sampling.reference_images of them, or sampling.reference_npz's), capped subsamples of the training (or arr_0)
    and held-out features, and the real-data floor (the held-out images against the statistics)."""
    began = time.perf_counter()
    sc = cfg.sampling
    device = resolve_device(cfg.compute.device)
    images_dir = plan["images"].artifact.require()
    model = shared_inception(sc.inception_weights, device)  # loaded once for both splits
    split = plan["images"].artifact.metadata()  # the splits' sizes, for the progress lines (older markers: none)
    holdout = summarize(featurized(keyed_pixels(images_dir, "holdout"), model), sc.pr_reference, model.dim, log,
                        "held-out", split.get("num_holdout"))
    train_stream = featurized(keyed_pixels(images_dir, "train", sc.reference_images), model)
    if sc.reference_npz is None:
        train_total = split.get("num_train")
        if train_total is not None and sc.reference_images is not None:
            train_total = min(train_total, sc.reference_images)
        train = summarize(train_stream, sc.pr_reference, model.dim, log, "training", train_total)
        mu, sigma, num_reference, kept = train.moments.mean(), train.moments.covariance(), train.moments.n, train.kept
    else:  # the statistics are the file's; the subsample its arr_0's, or else the training images'
        mu, sigma, has_activations = npz_statistics(sc.reference_npz, model.dim)
        source = npz_feature_batches(sc.reference_npz, model) if has_activations else train_stream
        kept, num_reference = summarize(source, sc.pr_reference, model.dim, log, "reference").kept, None
    _, train_rows = kept.result()
    _, holdout_rows = holdout.kept.result()
    arrays = {"mu": mu, "sigma": sigma, "train": train_rows, "holdout": holdout_rows}
    if holdout.moments.n > 1:  # the held-out split's own statistics: the floor, and the samples' FID against it
        arrays.update(holdout_mu=holdout.moments.mean(), holdout_sigma=holdout.moments.covariance())
    if len(holdout_rows) and len(train_rows):  # how near new images come to the training set: the near-copy threshold
        arrays["holdout_nn"] = nearest_neighbour_distances(holdout_rows, train_rows, device).astype(np.float32)
    save_file(arrays, str(out_dir / REFERENCE))
    floor = (fid_from_stats(arrays["holdout_mu"], arrays["holdout_sigma"], mu, sigma)
             if holdout.moments.n > 1 else None)
    log(f"reference: statistics of {num_reference or sc.reference_npz}, {len(train_rows)} of {kept.seen} reference "
        f"and {len(holdout_rows)} of {holdout.moments.n} held-out features kept; real-data FID floor {floor}")
    return {"num_reference": num_reference, "num_pr_reference": len(train_rows), "pr_source": kept.seen,
            "num_holdout": holdout.moments.n, "num_holdout_kept": len(holdout_rows), "fid_floor": floor,
            "statistics": "training images" if sc.reference_npz is None else f"npz {sc.reference_npz.name}",
            "device": str(device), "inception_precision": inception_precision(device),
            "seconds": round(time.perf_counter() - began, 1)}


# -- the evaluation ------------------------------------------------------------------------------------------------

def read_reference(reference_dir: Path, names: tuple[str, ...] = ("mu", "sigma", "train")) -> dict[str, np.ndarray]:
    """The named arrays of a reference artifact, and only those (the evaluation reads the held-out rows only for
    the memorization figure's threshold: how near new images come to the training images)."""
    with safe_open(str(Path(reference_dir) / REFERENCE), "np") as f:
        stored = set(f.keys())  # a reference made before the held-out rows were kept has none
        return {name: f.get_tensor(name) for name in names if name in stored}


def fid_against(feats: np.ndarray, ref: dict[str, np.ndarray]) -> float:
    """FID of a feature set against the reference's stored mean and covariance (clean-fid's order: samples first)."""
    return fid_from_stats(*feature_stats(feats), ref["mu"], ref["sigma"])


def evaluate_samples(samples_dir: Path, reference_dir: Path, out_dir: Path, k: int = EVAL_K,
                     weights: Path | None = None, model: InceptionFeatures | None = None,
                     device: str | torch.device = "auto") -> dict:
    """The samples' FID against the stored statistics; precision/recall, KID and nearest-training-image distances
    against the stored subsample; the near-copy fraction against the held-out images' own distances (`device`:
    compute.device, or a resolved one; a given model brings its own)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    ref = read_reference(reference_dir, ("mu", "sigma", "train", "holdout", "holdout_mu", "holdout_sigma",
                                         "holdout_nn"))
    began = time.perf_counter()
    feats = inception_features(sample_images(samples_dir), model=model, weights=weights, device=device)
    np.save(out_dir / "sample_features.npy", feats)
    pr = precision_recall(ref["train"], feats, k=k, device=device)
    nn = nearest_neighbour_distances(feats, ref["train"], device)
    holdout = ref.get("holdout", feats[:0])
    holdout_nn = ref.get("holdout_nn")  # the reference stage's; a reference from before it kept them: here
    if holdout_nn is None:
        holdout_nn = nearest_neighbour_distances(holdout, ref["train"], device) if len(holdout) else nn[:0]
    copies, threshold = near_copies(nn, holdout_nn)
    # Against the held-out split too (a reference made before its statistics were kept has none): images the
    # models never saw, where a model that copies its training images gains nothing.
    stats = feature_stats(feats)
    fid_holdout = fid_from_stats(*stats, ref["holdout_mu"], ref["holdout_sigma"]) if "holdout_mu" in ref else None
    return {"fid": fid_from_stats(*stats, ref["mu"], ref["sigma"]), "kid": kid(ref["train"], feats),
            "fid_holdout": fid_holdout,
            "kid_holdout": kid(holdout, feats) if len(holdout) > 1 else None,
            "precision": pr["precision"], "recall": pr["recall"],
            "nn_distance_mean": float(nn.mean()), "nn_distance_min": float(nn.min()),
            "near_copy_fraction": copies, "near_copy_threshold": threshold, "near_copy_quantile": NEAR_COPY_QUANTILE,
            "num_samples": len(feats),
            "pr_reference": len(ref["train"]), "device": str(getattr(model, "device", device)),
            "inception_precision": inception_precision(getattr(model, "device", device)),
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
        # Resolved in the worker: a Ray actor's own GPU, or the CPU.
        self.model = shared_inception(cfg.sampling.inception_weights, resolve_device(cfg.compute.device))

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
    device = resolve_device(cfg.compute.device)
    model = shared_inception(sc.inception_weights, device)  # loaded once for every seed and the oracle
    # one progress line a sample set (each is sampled and featurized whole): the first is the samples stage's images
    oracle_sets = sc.eval_seeds if sc.oracle and cfg.num_levels > 1 else 0
    progress = Progress(log, "evaluation", sc.eval_seeds + oracle_sets, unit="sample sets", every=0)
    meta = evaluate_samples(samples, reference, out_dir, model=model, device=device)
    ref = read_reference(reference, ("mu", "sigma"))  # every seed's FID is against the stored statistics
    seeds = [sc.seed + i for i in range(sc.eval_seeds)]
    # Every further sample set (the other seeds; the oracle's, from the held-out images' real coarser latents) is
    # independent of the others: the engine's workers sample and featurize them side by side.
    sets = [(seed, None, None) for seed in seeds[1:]]
    if sc.oracle and cfg.num_levels > 1:
        given, labels = oracle_conditions(cfg, plan, sc.num_samples)
        sets += [(seed, given, labels) for seed in seeds]
    feats = engine.map(SampleSetFeatures, {"cfg": cfg, "plan": plan}, sets) if sets else []
    fids, oracle = [meta["fid"]], []
    progress.update(1, f"FID with sampling seed {seeds[0]}: {meta['fid']:.2f}")
    for (seed, g, _), f in zip(sets, feats):
        (oracle if g is not None else fids).append(fid_against(f, ref))
        progress.update(1, f"oracle FID (level 0 from real coarser latents), seed {seed}: {oracle[-1]:.2f}"
                        if g is not None else f"FID with sampling seed {seed}: {fids[-1]:.2f}")
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
        "fid_floor": ref_meta["fid_floor"], "kid": meta["kid"], "fid_holdout": meta["fid_holdout"],
        "kid_holdout": meta["kid_holdout"], "precision": meta["precision"],
        "recall": meta["recall"], "nn_distance_mean": meta["nn_distance_mean"],
        # samples nearer a training image than near_copy_quantile of the held-out images are (new images: ~that)
        "near_copy_fraction": meta["near_copy_fraction"], "near_copy_quantile": meta["near_copy_quantile"],
        # What the FID and precision/recall were measured against (rows from before these columns lack them).
        "reference_images": ref_meta["num_reference"], "pr_reference": meta["pr_reference"],
        "gflops_per_image": cost_table(cfg)["sampling_gflops_per_image"],
        "wall_seconds": sample_meta["sample_seconds"] + meta["seconds"],
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return meta
