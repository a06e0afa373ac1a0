"""The sigma search as a command (pipeline/search.py has its rule): each grid value of sigma_l is a variant of the
experiment, materialized through the Dagster definitions up to its evaluation, so every artifact it shares with
the experiment is reused (images, features, SVD, latents, level l's own model; the models conditioned on level l
train), sampled on selection seeds that are never the reported ones, and chosen by the noise rule:

    python -m assets.search sigma --level 3 --grid 0 0.5 1.0 1.5
    python -m assets.search sigma --config configs/families_cpu.yaml --variant nested_msf_res9k_f81k \\
        --level 3 --level 2 --grid 0.5 1.0 1.5

Several --level are searched greedily in the order given (the paper's, top level first), each with the levels
before it at their chosen sigma. Each level's evidence (every sigma's FIDs over the selection seeds, its
fingerprints, the rule and the choice) is written to $NESTED_HOME/searches/; the command prints the table and the
override that applies the choice. Runs go into $DAGSTER_HOME's instance when it is set (they show in the UI).
"""
from __future__ import annotations

import argparse
import os
import sys

from dagster import DagsterInstance

from pipeline.config import ConfigError, apply_overrides, load_config, nested_home, parse_config, variant_configs
from pipeline.fingerprints import config_fingerprint
from pipeline.plan import build_plan
from pipeline.schema import Config
from pipeline.search import choose, grid_variants, reported_seeds, selection_seeds, write_evidence

from .definitions import materialize_variants

FIRST_SELECTION_SEED = 1000  # far from the reported seeds configs use (0, 100-102), which may grow in eval_seeds


def with_sigma(cfg: Config, level: int, sigma: float) -> Config:
    data = apply_overrides(cfg.model_dump(mode="json", exclude={"variants"}), {f"levels.{level - 1}.sigma": sigma})
    return parse_config(data, check_files=False)


def search_sigma(cfg: Config, home, levels: list[int], grid: list[float], seeds: list[int],
                 instance: DagsterInstance | None = None, log=print) -> list[dict]:
    """Search each of `levels` in turn (greedy); each level's record, also written under home/searches/."""
    records = []
    for level in levels:
        variants = grid_variants(cfg, level, grid, seeds)
        configs, _ = materialize_variants(cfg, home, variants, instance)
        rows = {configs[name].level(level).sigma: build_plan(configs[name], home)["evaluation"].artifact.metadata()["row"]
                for name in variants}
        for sigma, row in rows.items():  # what was scored is what was asked: the selection seeds, nothing reported
            if row["seeds"] != seeds or set(row["seeds"]) & set(reported_seeds(cfg)):
                raise RuntimeError(f"sigma {sigma}: scored on seeds {row['seeds']}, not the selection seeds {seeds}")
        decision = choose(cfg.level(level).sigma, {s: r["fid_seeds"] for s, r in rows.items()})
        record = {"search": "sigma", "level": level, "experiment": cfg.name,
                  "base_config_fingerprint": config_fingerprint(cfg, home), "grid": [float(s) for s in grid],
                  "selection_seeds": seeds, "reported_seeds": reported_seeds(cfg), **decision,
                  "runs": {format(s, "g"): {k: r[k] for k in ("config_fingerprint", "evaluation_fingerprint", "fid_seeds",
                                                               "fid_mean", "fid_std", "kid", "precision", "recall",
                                                               "near_copy_fraction", "gflops_per_image")}
                           for s, r in rows.items()},
                  "apply": {f"levels.{level - 1}.sigma": decision["chosen"]}}
        record["evidence"] = str(write_evidence(home, record))
        log(report(record))
        records.append(record)
        cfg = with_sigma(cfg, level, decision["chosen"])  # the next level is searched with this one chosen
    return records


def report(record: dict) -> str:
    lines = [f"sigma_{record['level']} of {record['experiment']} on selection seeds {record['selection_seeds']} "
             f"(reported seeds {record['reported_seeds']} not read):"]
    for sigma, s in record["per_sigma"].items():
        mark = " (current)" if float(sigma) == record["current"] else ""
        lines.append(f"  sigma {sigma:>5}: FID {s['fid_mean']:.2f} +- {s['fid_std']:.2f}{mark}")
    verdict = (f"changed to {record['chosen']:g}" if record["changed"] else f"kept at {record['chosen']:g}")
    lines.append(f"  best {record['best']:g}, gap {record['gap']:.2f} against std {record['std']:.2f}: {verdict} "
                 f"({record['rule']})")
    lines.append(f"  apply: {record['apply']}; evidence: {record['evidence']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assets.search", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("sigma", help="greedy search over the conditions' noise sigma_l")
    sp.add_argument("--level", type=int, action="append", required=True,
                    help="the level whose sigma to search; repeat for a greedy search in that order")
    sp.add_argument("--grid", type=float, nargs="+", required=True, help="the sigmas to try (the current one is added)")
    sp.add_argument("--config", help="experiment YAML (default: $NESTED_CONFIG, else configs/emoji.yaml)")
    sp.add_argument("--variant", help="search around this variant of the config instead of the config itself")
    sp.add_argument("--selection-seeds", type=int, default=2, help="sampling seeds per sigma (default: %(default)s)")
    sp.add_argument("--first-selection-seed", type=int, default=FIRST_SELECTION_SEED,
                    help="the first of them (default: %(default)s; refused where it meets a reported seed)")
    args = ap.parse_args(argv)

    try:
        cfg = load_config(args.config)
        if args.variant:
            variants = variant_configs(cfg)
            if args.variant not in variants:
                raise ConfigError(f"--variant {args.variant}: the config's variants are {sorted(variants)}")
            cfg = variants[args.variant]
        seeds = selection_seeds(cfg, args.first_selection_seed, args.selection_seeds)
        for level in args.level:
            grid_variants(cfg, level, args.grid, seeds)  # every level and value refused before anything runs
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    with instance:
        search_sigma(cfg, nested_home(), args.level, args.grid, seeds, instance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
