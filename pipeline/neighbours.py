"""Nearest training images of a few held-out queries under each level's latents (the paper's Figure 3).

Coarse levels should find semantic neighbours (same kind of thing, any colour), fine levels visual ones.
Level 0 (raw pixels) is shown first for comparison. Every space is streamed (`knn.RunningNearest`): the training
set is never held whole.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import iter_pixels
from .ingest import read_manifest
from .knn import RunningNearest, blocks
from .levels import iter_latent_samples
from .pictures import labelled_grid
from .sample import to_uint8
from .schema import Config
from .stage import Stage

QUERIES, K = 6, 7  # held-out queries, and neighbours shown per query and level (part of the stage's fingerprint)


def level_name(level: int) -> str:
    return "pixels" if level == 0 else f"level {level} (z{level})"


def _uint8(x: np.ndarray) -> np.ndarray:
    return to_uint8(torch.from_numpy(x)[None])[0]


def level_neighbours(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The neighbours stage: the QUERIES held-out queries' K nearest training images under each level.

    Every space (pixels, each level's latents) is streamed block by block through a running top-K, and only the
    images shown are kept: memory does not grow with the training set."""
    images_dir = plan["images"].artifact.require()
    held = read_manifest(images_dir, ["id"], split="holdout").column("id").to_pylist()
    query_keys = held[:: max(1, len(held) // QUERIES)][:QUERIES]  # spread over the (sorted) source
    wanted = set(query_keys)
    queries = {key: x for key, x, _ in iter_pixels(images_dir, "holdout") if key in wanted}
    spaces = {0: (lambda: iter_pixels(images_dir, "train"), np.stack([queries[q].ravel() for q in query_keys]))}
    for level in range(1, cfg.num_levels):
        path = plan[f"level_{level}_latents"].artifact.require()
        held_z = {key: z for key, z, _ in iter_latent_samples(path, "holdout") if key in wanted}
        spaces[level] = (lambda path=path: iter_latent_samples(path, "train"),
                         np.stack([held_z[q].ravel() for q in query_keys]))
    found: dict[str, dict[int, list[str]]] = {q: {} for q in query_keys}
    for level, (stream, q) in spaces.items():
        top = RunningNearest(q, K)
        for keys, block in blocks(stream()):
            top.update(block, keys)
        for qkey, keys in zip(query_keys, top.result()):
            found[qkey][level] = keys
    shown = {key for per in found.values() for keys in per.values() for key in keys}
    train = {key: x for key, x, _ in iter_pixels(images_dir, "train") if key in shown}  # fetched by key
    rows, labels = [], []
    for q, qkey in enumerate(query_keys):
        for level in spaces:
            rows.append([_uint8(queries[qkey])] + [_uint8(train[key]) for key in found[qkey][level]])
            labels.append(f"query {q + 1}, {level_name(level)}")
    labelled_grid(rows, out_dir / "neighbours.png", "nearest training images of held-out queries, by level: "
                  "coarse levels find the same kind of thing, fine levels the same look",
                  [("query", 1), (f"its {K} nearest training images (nearest first)", K)], labels)
    (out_dir / "neighbours.json").write_text(json.dumps(found, indent=1))
    # A few queries against blocks of at most 2,048 rows: faiss on the CPU, where a GPU would only add copies.
    return {"queries": query_keys, "k": K, "levels": list(spaces), "device": "cpu", "precision": "float32",
            "layout": "one row per (query, level), each labelled: levels 0 (pixels) .. L-1; the first column is "
                      "the query, then its nearest training images, nearest first"}
