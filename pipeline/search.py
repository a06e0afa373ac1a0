"""The paper's greedy search over the conditions' noise sigma_l (seed 001, Table 1), as plain functions: a grid's
variants sampled on selection seeds, the noise rule that picks, and the evidence a search records.

The paper hand-tunes sigma and names that a limitation; here a search is a command (assets/search.py runs it
through Dagster: ``python -m assets.search sigma --level 3 --grid 0 0.5 1.0 1.5``). Its discipline:
- **Selection seeds only.** Every variant samples on seeds chosen for the search, which never overlap the
  config's reported sampling seeds (`sampling.seed` .. + `eval_seeds`): a reported FID chose nothing.
- **The current sigma is a candidate**, sampled on the same selection seeds: each value is judged against what
  the config has now, not against a number measured on other seeds.
- **The noise rule** (`RULE`): the grid's best replaces the current sigma only if its FID mean over the
  selection seeds is lower by more than twice the larger of the two stds over those seeds (benchmarks' "met").
  A smaller gap keeps the current sigma: the families' sigma search chose 1.5 on one seed by 4.4 points, and on
  the reported seeds the gain was gone.
- **Greedy**: several levels are searched one after the other, each with the levels before it at their choice.
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .config import ConfigError
from .schema import Config

RULE = ("the grid's best sigma replaces the current one only if its FID mean over the selection seeds is lower by "
        "more than 2x the larger of the two FID stds over those seeds; otherwise the current sigma stays")


def reported_seeds(cfg: Config) -> list[int]:
    return [cfg.sampling.seed + i for i in range(cfg.sampling.eval_seeds)]


def selection_seeds(cfg: Config, first: int, count: int) -> list[int]:
    """The seeds a search samples on: `count` from `first`, refused where they meet a reported seed."""
    if count < 2:
        raise ConfigError(f"selection seeds: {count}; the noise rule needs an FID std, so at least 2")
    seeds = list(range(first, first + count))
    if overlap := sorted(set(seeds) & set(reported_seeds(cfg))):
        raise ConfigError(f"selection seeds {seeds} include the reported sampling seeds {overlap} "
                          f"(sampling.seed {cfg.sampling.seed}, eval_seeds {cfg.sampling.eval_seeds}): a search must "
                          f"not read the seeds its result is reported on; pass another --first-selection-seed")
    return seeds


def sigma_name(level: int, sigma: float) -> str:
    """A variant name for sigma_l = `sigma` (variant names allow no '.')."""
    return f"search_sigma{level}_{format(sigma, 'g').replace('.', 'p').replace('-', 'm')}"


def grid_variants(cfg: Config, level: int, grid: list[float], seeds: list[int]) -> dict[str, dict]:
    """The search's variants of `cfg` (as sweep overrides): sigma_level at each grid value and at its current
    value, every one sampled on `seeds` (no oracle: it chooses nothing)."""
    if not 1 <= level < cfg.num_levels:
        raise ConfigError(f"--level {level}: sigma belongs to a level that conditions others, 1 .. "
                          f"{cfg.num_levels - 1} for this config's L = {cfg.num_levels}")
    if not grid or any(not np.isfinite(s) or s < 0 for s in grid):
        raise ConfigError(f"--grid {grid}: sigmas are finite and >= 0")
    values = list(dict.fromkeys([cfg.level(level).sigma, *map(float, grid)]))
    sampling = {"sampling.seed": seeds[0], "sampling.eval_seeds": len(seeds), "sampling.oracle": False}
    return {sigma_name(level, s): {f"levels.{level - 1}.sigma": s, **sampling} for s in values}


def choose(current: float, fids: dict[float, list[float]]) -> dict:
    """The rule applied to each sigma's FIDs over the selection seeds: the choice and why."""
    stats = {s: {"fid_mean": float(np.mean(f)), "fid_std": float(np.std(f, ddof=1)), "fid_seeds": list(f)}
             for s, f in fids.items()}
    best = min(stats, key=lambda s: stats[s]["fid_mean"])
    gap = stats[current]["fid_mean"] - stats[best]["fid_mean"]
    std = max(stats[best]["fid_std"], stats[current]["fid_std"])
    changed = best != current and gap > 2 * std
    return {"current": current, "best": best, "chosen": best if changed else current, "changed": changed,
            "gap": round(gap, 3), "std": round(std, 3), "gap_in_std": round(gap / std, 2) if std else None,
            "rule": RULE, "per_sigma": {format(s, "g"): v for s, v in stats.items()}}


def write_evidence(home: Path, record: dict) -> Path:
    """The search's record under $NESTED_HOME/searches/, written whole or not at all."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = Path(home) / "searches"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sigma-level{record['level']}-{record['base_config_fingerprint'][:12]}-{stamp}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path
