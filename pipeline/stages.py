"""Every stage's build function by kind, and the building of one stage of a plan in plain Python.

A stage function is ``(cfg, plan, out_dir, log, **where) -> metadata``: it reads its inputs' artifacts through
the plan, writes its own into `out_dir` (a temporary directory, published when it returns) and returns what the
artifact's marker records. `where` is ``level=`` for a per-level stage, and ``variant=`` for the evaluation.
The assets (assets/) call them through `materialize`, and so can a script or a test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import Config
from .evaluate import build_reference, evaluate_run
from .features import build_features
from .ingest import build_images
from .levels import build_level_latents
from .neighbours import level_neighbours
from .plan import Stage
from .sample import generate_samples
from .svd import build_basis
from .train import train, train_level
from .variations import build_variations

STAGES: dict[str, Callable[..., dict]] = {
    "images": build_images, "features": build_features, "svd": build_basis, "latents": build_level_latents,
    "models": train, "samples": generate_samples, "reference": build_reference, "evaluation": evaluate_run,
    "neighbours": level_neighbours, "variations": build_variations,
}


def build(cfg: Config, plan: dict[str, Stage], name: str, out_dir: Path, log: Callable[[str], None] = print,
          **keywords) -> dict:
    """Run plan[name]'s stage function into out_dir."""
    stage = plan[name]
    where = {} if stage.level is None else {"level": stage.level}
    return STAGES[stage.kind](cfg, plan, out_dir, log, **where, **keywords)


def materialize(cfg: Config, plan: dict[str, Stage], name: str, log: Callable[[str], None] = print,
                **keywords) -> tuple[dict, bool]:
    """Build plan[name] unless an intact artifact exists; (its metadata, whether it was a cache hit)."""
    stage = plan[name]
    if stage.kind == "models":  # training's own driver: torchrun's ranks, and the checkpoints it removes
        meta = train_level(cfg, plan, stage.level, log)
        return meta, meta["cache"] == "hit"
    return stage.artifact.materialize(lambda out: build(cfg, plan, name, out, log, **keywords), log)
