"""Data-quality checks of the artifacts, in plain Python: assets/checks.py makes each an asset check.

Every check reads an artifact through the readers its stage uses and returns a CheckOutcome instead of
raising: an artifact that cannot be read has failed its check, and the message says why. Large arrays are
streamed block by block, so a check costs about as much memory as the stage that wrote the artifact.
"""
from __future__ import annotations

import functools
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image
from safetensors.numpy import load_file

from models.denoiser import input_shape

from .cache import Artifact
from .data import iter_latents
from .features import iter_rows, open_features
from .ingest import image_shards, read_manifest
from .evaluate import REFERENCE
from .level_kinds import level_kind, level_shape
from .levels import STATS as LATENT_STATS
from .levels import latent_shards, read_latents
from .metrics import FEATURE_DIM
from .model_io import load_level_model, spec_scheduler
from .sample_shards import raw_samples
from .schema import PR_REFERENCE
from .stats import ChannelStats
from .svd import load_basis
from .table import KEY, TABLE, evaluation_rows
from .variations import TABLE as VARIATIONS_TABLE

SPLITS = ("train", "holdout")


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str  # one line, shown in the UI
    metadata: dict = field(default_factory=dict)  # JSON-able values shown beside it


def _never_raises(check):
    @functools.wraps(check)
    def run(*args, **kwargs) -> CheckOutcome:
        try:
            return check(*args, **kwargs)
        except Exception as e:  # missing files, torn tars, corrupt safetensors: all are failed checks
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            return CheckOutcome(False, f"{check.__name__} raised {msg}", {"error": msg})
    return run


def _raw_samples(shards: list[str]):
    """Undecoded samples: checks decode themselves, so one bad member is counted rather than fatal."""
    # No shards is a legitimate empty split (build_latents removes its tar), which WebDataset cannot open.
    return wds.WebDataset(shards, shardshuffle=False, empty_check=False) if shards else []


def _manifest_ids(images_dir: Path) -> dict[str, list[str]]:
    m = read_manifest(images_dir)
    ids = {s: [] for s in SPLITS}
    for key, split in zip(m.column("id").to_pylist(), m.column("split").to_pylist()):
        ids[split].append(key)
    return ids


@_never_raises
def images_match_manifest(images_dir: Path) -> CheckOutcome:
    shards = image_shards(images_dir)
    in_shards = Counter(json.loads(s["json"])["split"] for s in _raw_samples(shards))
    manifest = {s: len(v) for s, v in _manifest_ids(images_dir).items()}
    meta = {"shards": len(shards), **{f"shards_{s}": in_shards.get(s, 0) for s in SPLITS},
            **{f"manifest_{s}": manifest[s] for s in SPLITS}}
    total_s, total_m = sum(in_shards.values()), sum(manifest.values())
    passed = all(in_shards.get(s, 0) == manifest[s] for s in SPLITS) and total_s == total_m
    return CheckOutcome(passed, f"{total_s} images in {len(shards)} shards, {total_m} in the manifest "
                        f"(train {meta['shards_train']}/{meta['manifest_train']}, "
                        f"holdout {meta['shards_holdout']}/{meta['manifest_holdout']})", meta)


@_never_raises
def features_are_finite(features_dir: Path, images_dir: Path) -> CheckOutcome:
    arr = open_features(features_dir)
    bad = sum(int((~np.isfinite(block)).sum()) for _, block in iter_rows(arr))
    rows = read_manifest(images_dir).num_rows
    meta = {"shape": list(arr.shape), "non_finite": bad, "manifest_rows": rows}
    return CheckOutcome(bad == 0 and arr.shape[0] == rows,
                        f"{bad} non-finite values in features {tuple(arr.shape)}; {rows} rows in the manifest", meta)


def _latent_stats(latents_dir: Path, split: str, batch: int = 256) -> tuple[dict, int]:
    """Per-channel statistics of a split (ChannelStats: over samples and positions) and its non-finite count."""
    stats, bad = ChannelStats(), 0
    stream = iter_latents(latents_dir, split) if latent_shards(latents_dir, split) else iter(())
    while block := [z for _, z, _ in islice(stream, batch)]:
        x = torch.from_numpy(np.stack(block))
        bad += int((~torch.isfinite(x)).sum())
        stats.update(x)
    return (stats.summary() if stats.n else {}), bad


@_never_raises
def latents_are_standardized(latents_dir: Path, tol: float = 0.1) -> CheckOutcome:
    # Only the training split is held to 0 and 1, since the statistics were fitted on it; the held-out split
    # is only reported: its spread shows how well those statistics carry over to unseen images.
    stats = {s: _latent_stats(latents_dir, s) for s in SPLITS}
    bad = sum(n for _, n in stats.values())
    train = stats["train"][0]
    meta = {"non_finite": bad, "train_mean_abs_max": train.get("mean_abs_max"),
            **{f"{s}_std_{m}": stats[s][0].get(f"std_{m}") for s in SPLITS for m in ("min", "max")}}
    if not train:
        return CheckOutcome(False, "no training latents", meta)
    passed = bad == 0 and train["mean_abs_max"] <= tol and 1 - tol <= train["std_min"] <= train["std_max"] <= 1 + tol
    return CheckOutcome(passed, f"train channel |mean| <= {train['mean_abs_max']:.3f}, std in "
                        f"[{train['std_min']:.3f}, {train['std_max']:.3f}] (tolerance {tol}); {bad} non-finite", meta)


@_never_raises
def vae_latents_are_consistent(latents_dir: Path, tol: float = 0.01) -> CheckOutcome:
    # A VAE latent is not standardized (vae_scale only brings it near unit std): what can go wrong is a NaN, or
    # shards that are not the ones the stage measured, so the stored training statistics are recomputed.
    stats = {s: _latent_stats(latents_dir, s) for s in SPLITS}
    bad = sum(n for _, n in stats.values())
    train = stats["train"][0]
    if not train:
        return CheckOutcome(False, "no training latents", {"non_finite": bad})
    stored = load_file(str(latents_dir / LATENT_STATS))["std"]
    drift = abs(train["std_mean"] - float(stored.mean())) / max(float(stored.mean()), 1e-12)
    meta = {"non_finite": bad, "train_std_mean": train["std_mean"], "stored_std_mean": float(stored.mean()),
            "train_abs_max": train["abs_max"]}
    return CheckOutcome(bad == 0 and drift <= tol, f"{bad} non-finite; training channel std {train['std_mean']:.4f} "
                        f"(stored when built: {float(stored.mean()):.4f}, relative drift {drift:.1e} <= {tol})", meta)


@_never_raises
def latents_match_manifest(latents_dir: Path, images_dir: Path) -> CheckOutcome:
    # Keys in manifest order, not just counts: training zips a level's latents with its conditions by position.
    manifest = _manifest_ids(images_dir)
    latents = {s: [x["__key__"] for x in _raw_samples(latent_shards(latents_dir, s))] for s in SPLITS}
    meta = {**{f"latents_{s}": len(latents[s]) for s in SPLITS}, **{f"manifest_{s}": len(manifest[s]) for s in SPLITS},
            "keys_match": all(latents[s] == manifest[s] for s in SPLITS)}
    return CheckOutcome(meta["keys_match"], f"latents train {meta['latents_train']}/{meta['manifest_train']}, "
                        f"holdout {meta['latents_holdout']}/{meta['manifest_holdout']} of the manifest; keys "
                        f"{'match' if meta['keys_match'] else 'differ'}", meta)


@_never_raises
@torch.inference_mode()
def checkpoint_loads(cfg, plan, level: int) -> CheckOutcome:
    artifact = plan[f"level_{level}_model"].artifact
    model, spec = load_level_model(artifact.require())
    # Shapes come from the config (a VAE level 0's from its saved spec): a spec only agrees with itself.
    said_by_model = level == 0 and not level_kind(cfg, 0).is_pixels
    shape = tuple(spec["in_shape"]) if said_by_model else level_shape(cfg, level)
    shape = input_shape(model, shape)  # a matryoshka level 0 denoises its extended state
    conds = [torch.randn(2, *level_shape(cfg, k)) for k in cfg.conditions_of(level)]
    labels = torch.zeros(2, dtype=torch.long) if spec["num_classes"] else None
    t = torch.full((2,), spec_scheduler(spec)["num_train_timesteps"] // 2, dtype=torch.long)
    out = model(torch.randn(2, *shape), t, conds, labels)
    meta = {"params": sum(p.numel() for p in model.parameters()), "step": artifact.metadata().get("steps"),
            "output_shape": list(out.shape)}
    passed = tuple(out.shape) == (2, *shape) and bool(torch.isfinite(out).all())
    return CheckOutcome(passed, f"level {level} {spec['backbone']}-{spec['size']} loads; forward of (2, *{shape}) "
                        f"gives {tuple(out.shape)}, {'finite' if passed else 'NOT finite or wrong shape'}", meta)


def _png_ok(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).convert("RGB")  # convert() decodes every pixel, open() only the header
        return True
    except Exception:
        return False


def _npy_ok(data: bytes) -> bool:
    try:
        return bool(np.isfinite(np.load(io.BytesIO(data), allow_pickle=False)).all())
    except Exception:
        return False


@_never_raises
def samples_are_complete(samples_dir: Path, num_samples: int) -> CheckOutcome:
    count, bad_images, bad_latents = 0, 0, 0
    # Undecoded on purpose (unlike sample_images): one bad member is counted, not fatal.
    for s in raw_samples(samples_dir):
        count += 1
        bad_images += not _png_ok(s["png"])
        bad_latents += sum(not _npy_ok(v) for k, v in s.items() if k.startswith("level_") and k.endswith(".npy"))
    meta = {"num_samples": count, "expected": num_samples, "undecodable_images": bad_images,
            "bad_latents": bad_latents}
    return CheckOutcome(count == num_samples and bad_images == 0 and bad_latents == 0,
                        f"{count} of {num_samples} samples; {bad_images} undecodable images, {bad_latents} latents "
                        "unreadable or non-finite", meta)


@_never_raises
def evaluation_row_present(home: Path, evaluation_fingerprint: str) -> CheckOutcome:
    # The row lives in the evaluation artifact; the table is its export and must hold it exactly once.
    own = [r for r in evaluation_rows(home) if r[KEY] == evaluation_fingerprint]
    table = pq.read_table(Path(home) / TABLE, columns=[KEY, "fid"]).to_pylist()
    rows = [r for r in table if r[KEY] == evaluation_fingerprint]
    fid = rows[0]["fid"] if len(rows) == 1 else None
    passed = len(own) == 1 and fid is not None and math.isfinite(fid)
    return CheckOutcome(passed, f"{len(rows)} row(s) for evaluation {evaluation_fingerprint} in {TABLE}, "
                        f"{len(own)} in its artifact" + (f", FID {fid:.2f}" if fid is not None else ""),
                        {"rows": len(rows), "artifact_rows": len(own), "fid": fid})


@_never_raises
def files_intact(artifact: Artifact) -> CheckOutcome:
    """Every file the marker recorded is there with its size and SHA-256 (all files hashed, however large)."""
    files = artifact.metadata().get("files")
    if files is None:
        return CheckOutcome(False, "the marker records no files (built by an older version): rematerialize to verify",
                            {"files": None})
    problems = artifact.damage(full=True)
    meta = {"files": len(files), "bytes": sum(size for size, _ in files.values()), "problems": problems[:20]}
    return CheckOutcome(not problems, f"{len(files)} files, {meta['bytes'] / 2**20:.1f} MiB: "
                        + ("; ".join(problems[:3]) if problems else "all match their recorded size and SHA-256"), meta)


@_never_raises
def basis_is_orthonormal(svd_dir: Path, channels: int, tol: float = 1e-3) -> CheckOutcome:
    b = load_basis(svd_dir)
    comp = b["components"].astype(np.float64)
    finite = all(bool(np.isfinite(v).all()) for v in b.values())
    err = float(np.abs(comp @ comp.T - np.eye(len(comp))).max()) if comp.ndim == 2 else math.inf
    ev = b["explained_variance"]
    ordered = bool((ev >= 0).all() and (np.diff(ev) <= 1e-6 * max(float(ev.max()), 1e-12)).all())
    meta = {"shape": list(comp.shape), "orthonormality_error": err, "finite": finite, "descending": ordered,
            "num_samples": int(b["num_samples"][0])}
    passed = finite and comp.shape == (channels, channels) and err <= tol and ordered and meta["num_samples"] > 1
    return CheckOutcome(passed, f"components {tuple(comp.shape)} for {channels} feature channels, max |VV^T - I| "
                        f"{err:.2e} (tolerance {tol}), variances {'descending' if ordered else 'NOT descending'}, "
                        f"{'finite' if finite else 'NOT finite'}", meta)


def _subsample_mean_error(rows: np.ndarray, mu: np.ndarray, sigma: np.ndarray, population: int,
                          z: float) -> tuple[float, bool]:
    """(max |mean of the kept rows - mu|, whether every dimension is within `z` standard errors of a uniform
    subsample of `population` rows (plus rounding)). The finite-population correction makes the bound exact (0)
    where every row is kept, and a few standard errors where a sample is: a mu that is not the rows' is far off."""
    err = np.abs(rows.astype(np.float64).mean(0) - mu)
    n = len(rows)
    standard_error = np.sqrt(np.clip(np.diag(sigma), 0, None) / n * max(0.0, 1 - n / max(population, 1)))
    return float(err.max()), bool((err <= 1e-3 + z * standard_error).all())


@_never_raises
def reference_is_consistent(reference_dir: Path, num_reference: int | None, num_holdout: int,
                            cap: int = PR_REFERENCE, pr_source: int | None = None, z: float = 6.0,
                            dim: int = FEATURE_DIM) -> CheckOutcome:
    """The FID statistics are finite, `dim`-d (the Inception's 2048), sigma symmetric and positive semi-definite (to rounding); min(cap, N)
    finite features of the reference (`pr_source` rows: default the num_reference images) and of the held-out
    images are kept; where the statistics are the reference images' own (num_reference not None: not an .npz's),
    the kept rows' mean agrees with mu (`_subsample_mean_error`)."""
    ref = load_file(str(Path(reference_dir) / REFERENCE))
    mu, sigma, train, holdout = ref["mu"], ref["sigma"], ref["train"], ref["holdout"]
    pr_source = num_reference if pr_source is None else pr_source
    finite = all(bool(np.isfinite(v).all()) for v in ref.values())
    shapes = (mu.shape == (dim,) and sigma.shape == (dim, dim) and train.shape == (min(cap, pr_source), dim)
              and holdout.shape == (min(cap, num_holdout), dim))
    symmetric = bool(sigma.ndim == 2 and np.allclose(sigma, sigma.T))
    eigenvalues = np.linalg.eigvalsh(sigma) if finite and symmetric and shapes else np.array([-math.inf, 0.0])
    psd = bool(eigenvalues[0] >= -1e-8 * max(float(eigenvalues[-1]), 1e-12))
    mu_err, mu_ok = (_subsample_mean_error(train, mu, sigma, pr_source, z) if num_reference is not None and len(train)
                     and shapes else (None, True))
    meta = {"train": list(train.shape), "holdout": list(holdout.shape), "cap": cap, "finite": finite,
            "mu_error": mu_err, "sigma_symmetric": symmetric, "sigma_min_eigenvalue": float(eigenvalues[0])}
    passed = finite and shapes and symmetric and psd and mu_ok
    agreement = "mu from a file" if mu_err is None else f"their mean {'agrees' if mu_ok else 'does NOT agree'} with " \
                                                        f"mu (max |difference| {mu_err:.1e})"
    return CheckOutcome(passed, f"{len(train)} of {pr_source} reference and {len(holdout)} of {num_holdout} held-out "
                        f"Inception features kept (cap {cap}), {'finite' if finite else 'NOT finite'}; {agreement}; "
                        f"sigma {'symmetric' if symmetric else 'NOT symmetric'}, "
                        f"{'PSD' if psd else 'NOT positive semi-definite'}", meta)


@_never_raises
def neighbours_complete(neighbours_dir: Path, levels: int, k: int) -> CheckOutcome:
    found = json.loads((Path(neighbours_dir) / "neighbours.json").read_text())
    picture_ok = _png_ok((Path(neighbours_dir) / "neighbours.png").read_bytes())
    bad = [q for q, per in found.items() if len(per) != levels or any(len(v) != k for v in per.values())]
    meta = {"queries": len(found), "levels": levels, "k": k, "incomplete_queries": bad, "picture_decodes": picture_ok}
    return CheckOutcome(bool(found) and not bad and picture_ok,
                        f"{len(found)} queries x {levels} levels x {k} neighbours, {len(bad)} incomplete; picture "
                        f"{'decodes' if picture_ok else 'does NOT decode'}", meta)


@_never_raises
def variations_keep_their_sources(variations_dir: Path, latents_dirs: dict[int, Path]) -> CheckOutcome:
    """Every variation's kept levels are exactly its held-out source's latents; every array is finite."""
    info = json.loads((Path(variations_dir) / VARIATIONS_TABLE).read_text())
    held = {}
    for level, path in latents_dirs.items():
        keys, z, _ = read_latents(path, "holdout")
        held[level] = dict(zip(keys, z))
    mismatched, nonfinite = [], []
    with np.load(Path(variations_dir) / "latents.npz") as f:
        for name in f.files:  # '<column>/seed<m>/level_<l>'
            column, _, level = name.split("/")
            level, z = int(level[len("level_"):]), f[name]
            if not np.isfinite(z).all():
                nonfinite.append(name)
            kept = column != "none" and level >= int(column.split("..")[0][1:])
            for row, source in enumerate(info["sources"]):
                if kept and source in held.get(level, {}) and not np.array_equal(z[row], held[level][source]):
                    mismatched.append(f"{name}[{row}]")
    picture_ok = _png_ok((Path(variations_dir) / "variations.png").read_bytes())
    meta = {"sources": len(info["sources"]), "mismatched": mismatched[:10], "nonfinite": nonfinite[:10],
            "picture_decodes": picture_ok}
    return CheckOutcome(not mismatched and not nonfinite and picture_ok,
                        f"{len(info['sources'])} sources: {len(mismatched)} kept latents differ from the source's, "
                        f"{len(nonfinite)} arrays not finite; picture {'decodes' if picture_ok else 'does NOT decode'}",
                        meta)
