"""Nearest training images of a few held-out queries under each level's latents (the paper's Figure 3).

Coarse levels should find semantic neighbours (same kind of thing, any colour), fine levels visual ones.
Level 0 (raw pixels) is shown first for comparison.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .data import iter_pixels
from .knn import nearest
from .levels import read_latents
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
    """The neighbours stage: the QUERIES held-out queries' K nearest training images under each level."""
    images_dir = plan["images"].artifact.require()
    train = {key: x for key, x, _ in iter_pixels(images_dir, "train")}
    held = {key: x for key, x, _ in iter_pixels(images_dir, "holdout")}
    train_keys = list(train)
    query_keys = list(held)[:: max(1, len(held) // QUERIES)][:QUERIES]  # spread over the (sorted) source
    spaces = {0: (np.stack([train[t].ravel() for t in train_keys]), np.stack([held[q].ravel() for q in query_keys]))}
    for level in range(1, cfg.num_levels):
        path = plan[f"level_{level}_latents"].artifact.require()
        tkeys, tz, _ = read_latents(path, "train")
        hkeys, hz, _ = read_latents(path, "holdout")
        assert tkeys == train_keys, "latent shards and images disagree on keys"
        pos = {key: i for i, key in enumerate(hkeys)}
        spaces[level] = (tz.reshape(len(tz), -1), hz[[pos[q] for q in query_keys]].reshape(len(query_keys), -1))
    found, rows, labels = {}, [], []
    for q, qkey in enumerate(query_keys):
        for level, (t, h) in spaces.items():
            idx = nearest(h[q:q + 1], t, K)
            found.setdefault(qkey, {})[level] = [train_keys[i] for i in idx[0]]
            rows.append([_uint8(held[qkey])] + [_uint8(train[train_keys[i]]) for i in idx[0]])
            labels.append(f"query {q + 1}, {level_name(level)}")
    labelled_grid(rows, out_dir / "neighbours.png", "nearest training images of held-out queries, by level: "
                  "coarse levels find the same kind of thing, fine levels the same look",
                  [("query", 1), (f"its {K} nearest training images (nearest first)", K)], labels)
    (out_dir / "neighbours.json").write_text(json.dumps(found, indent=1))
    return {"queries": query_keys, "k": K, "levels": list(spaces),
            "layout": "one row per (query, level), each labelled: levels 0 (pixels) .. L-1; the first column is "
                      "the query, then its nearest training images, nearest first"}
