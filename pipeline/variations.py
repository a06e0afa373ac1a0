"""Variations of real images (RCG's, and the paper's Figure 1 read the other way): keep an image's own latents at
levels >= l, sample every finer level, and see how much of the image survives.

For each of `variations.num_images` held-out images (and every image of `variations.folder`), each l from
L - 1 (only the coarsest latent kept) down to 1 (every semantic latent kept), and each of `variations.seeds`
seeds, the finer levels are sampled top-down as the samples stage does (the kept latents get their level's sigma
noise before they condition, as in training). Column "none" is plain samples with the same seeds: the baseline.

What is kept is measured in the frozen encoder's space: the cosine between the global-average-pooled features
of each variation and of its source (both at the level-0 resolution). More levels kept should mean a higher
cosine; "none" is what unrelated samples score.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import iter_pixels
from .features import encoder_features
from .ingest import label_names, prepare_image
from .level_kinds import encode_images
from .levels import read_latents
from .pictures import labelled_grid
from .runtime import resolve_device
from .sample import decode_level0, sample_hierarchy, to_uint8
from .schema import Config
from .stage import Stage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PICTURE, TABLE = "variations.png", "variations.json"


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_folder(cfg: Config, folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, level-0 images, encoder-size images) of a folder's images, prepared as ingest prepares the data.
    An image that cannot be read is refused by name."""
    names, small, large = [], [], []
    for p in folder_images(folder):
        try:
            a, b = prepare_image(p.read_bytes(), cfg.dataset)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise ValueError(f"variations.folder: cannot read {p.name}: {type(e).__name__}: {e}") from None
        names.append(p.name)
        small.append(a)
        large.append(b)
    if not names:
        raise ValueError(f"variations.folder: no {'/'.join(IMAGE_SUFFIXES)} image in {folder}")
    return names, np.stack(small), np.stack(large)


def sources(cfg: Config, plan: dict[str, Stage]) -> tuple[list[str], np.ndarray, dict[int, torch.Tensor], torch.Tensor | None]:
    """(names, level-0 images (N, H, W, 3) uint8, real latents of every semantic level, labels or None)."""
    n = cfg.variations.num_images
    held = []
    for key, x, y in iter_pixels(plan["images"].artifact.require(), "holdout"):
        held.append((key, x, y))
        if len(held) == n:
            break
    names = [k for k, _, _ in held]
    pixels = to_uint8(torch.from_numpy(np.stack([x for _, x, _ in held])))
    latents = {}
    for level in range(1, cfg.num_levels):
        keys, z, _ = read_latents(plan[f"level_{level}_latents"].artifact.require(), "holdout")
        latents[level] = torch.from_numpy(z[: len(names)])
        if keys[: len(names)] != names:
            raise RuntimeError(f"level_{level}_latents and images disagree on the held-out keys")
    labels = torch.tensor([y for _, _, y in held]) if cfg.class_conditional else None
    if cfg.variations.folder is not None:
        extra, small, large = load_folder(cfg, cfg.variations.folder)
        encoded = encode_images(cfg, plan, large, small)
        names += extra
        pixels = np.concatenate([pixels, small])
        latents = {level: torch.cat([latents[level], encoded[level]]) for level in latents}
        if labels is not None:  # no label of their own: the null label, as for guidance's unconditional pass
            null = torch.full((len(extra),), len(plan_label_names(plan)), dtype=labels.dtype)
            labels = torch.cat([labels, null])
    return names, pixels, latents, labels


def plan_label_names(plan: dict[str, Stage]) -> list[str]:
    return label_names(plan["images"].artifact.require())


def pooled_features(cfg: Config, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, C) global-average-pooled encoder features of (N, H, W, 3) uint8 images, unit length."""
    f = encoder_features(cfg.encoder, images, resolve_device(cfg.compute.device), batch_size).mean(dim=(1, 2))
    return torch.nn.functional.normalize(f, dim=1).numpy()


def kept_similarity(source: np.ndarray, variations: dict[str, np.ndarray]) -> list[dict]:
    """Per column, the cosine of each variation to its source: source (N, C) and each column (N, M, C), unit rows."""
    rows = []
    for column, v in variations.items():
        cos = np.einsum("nc,nmc->nm", source, v)
        rows.append({"kept": column, "cosine_mean": float(cos.mean()), "cosine_std": float(cos.std(ddof=1)) if
                     cos.size > 1 else 0.0, "per_image": [float(c) for c in cos.mean(axis=1)]})
    return rows


def column_name(cfg: Config, keep: int) -> str:
    """The kept latents of the variations sampled from level `keep` up (`keep` = L: none)."""
    top = cfg.num_levels - 1
    if keep > top:
        return "none"
    return f"z{keep}" if keep == top else f"z{keep}..z{top}"


def build_variations(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The variations stage: the picture, every variation's latents, and the kept-similarity table."""
    vc, sc = cfg.variations, cfg.sampling
    names, pixels, real, labels = sources(cfg, plan)
    n, L = len(names), cfg.num_levels
    images, latents = {}, {}
    for keep in range(L, 0, -1):  # none kept, then only the coarsest, ..., then every semantic level
        column = column_name(cfg, keep)
        images[column] = []
        for m in range(vc.seeds):
            given = {level: real[level] for level in range(keep, L)}
            gen = sample_hierarchy(cfg, plan, n, sc.seed + m, cfg.sampling_plan(), given=given or None, labels=labels)
            images[column].append(to_uint8(decode_level0(cfg, gen[0])))
            latents.update({f"{column}/seed{m}/level_{level}": z.numpy() for level, z in gen.items()})
        log(f"variations: kept {column}: {n} images x {vc.seeds} seeds")
    feats = pooled_features(cfg, np.concatenate([pixels] + [im for col in images.values() for im in col]))
    source, rest = feats[:n], feats[n:].reshape(len(images), vc.seeds, n, -1)
    table = kept_similarity(source, {col: rest[i].transpose(1, 0, 2) for i, col in enumerate(images)})

    rows = [[pixels[i]] + [images[col][m][i] for col in images for m in range(vc.seeds)] for i in range(n)]
    columns = [("source", 1)] + [(f"kept {col}" if col != "none" else "none kept", vc.seeds) for col in images]
    labelled_grid(rows, out_dir / PICTURE, f"variations: the finer levels resampled ({vc.seeds} seeds each) "
                  f"from the kept real latents; more kept to the right", columns, [_short(x) for x in names])
    np.savez(out_dir / "latents.npz", **latents)
    (out_dir / TABLE).write_text(json.dumps({"sources": names, "columns": list(images), "seeds": vc.seeds,
                                             "similarity": table}, indent=1))
    return {"num_images": n, "sources": names, "columns": list(images), "seeds": vc.seeds, "similarity": table,
            "device": str(resolve_device(cfg.compute.device)), "precision": "float32",
            "layout": "one row per source image (first column); then, per kept set, its variations (one per "
                      "seed): none kept (plain samples), the coarsest latent only, ..., every semantic latent",
            "variation_ids": "'<column>/seed<m>/<row>', e.g. 'z2/seed0/3' (python -m pipeline.lineage)"}


def _short(name: str, width: int = 12) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def variation_latents(variations_dir: Path, vid: str) -> tuple[dict[int, np.ndarray], dict]:
    """The latents of every level of one variation, '<column>/seed<m>/<row>', and the table it belongs to."""
    try:
        column, seed, row = vid.split("/")
        row = int(row)
    except ValueError:
        raise ValueError(f"{vid!r}: a variation id is '<column>/seed<m>/<row>', e.g. 'z2/seed0/3'") from None
    info = json.loads((Path(variations_dir) / TABLE).read_text())
    if column not in info["columns"] or not 0 <= row < len(info["sources"]):
        raise ValueError(f"{vid!r}: columns are {info['columns']}, rows 0..{len(info['sources']) - 1}")
    with np.load(Path(variations_dir) / "latents.npz") as f:
        prefix = f"{column}/{seed}/level_"
        found = {int(k[len(prefix):]): f[k][row] for k in f.files if k.startswith(prefix)}
    if not found:
        raise ValueError(f"{vid!r}: no such seed (there are {info['seeds']})")
    return found, info
