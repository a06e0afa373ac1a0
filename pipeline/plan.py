"""Where every artifact of an experiment lives, derived from the config alone: one Stage per stage of every kind
that pipeline/stages.py declares, each fingerprinted by its settings and inputs (pipeline/stage.py).

``python -m pipeline.plan`` prints where each artifact is and its state (``--verify`` hashes every file).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import load_config, nested_home
from .schema import Config
from .stage import Stage, make_stage
from .stages import STAGE_KINDS
from .table import TABLE


def build_plan(cfg: Config, home: Path) -> dict[str, Stage]:
    """Every stage of the experiment by asset name, in the order the kinds are declared (upstream first)."""
    plan: dict[str, Stage] = {}
    for kind in STAGE_KINDS:
        for asset, level in kind.stages(cfg):
            plan[asset] = make_stage(home, kind, asset, level, kind.settings(cfg, level),
                                     kind.inputs(cfg, plan, level, home))
    return plan


def artifact_states(plan: dict[str, Stage], full: bool = False) -> dict[str, tuple[str, list[str]]]:
    """Each stage's state, 'done', 'missing' or 'DAMAGED' (with what is wrong), checked against its marker."""
    out = {}
    for name, st in plan.items():
        if not st.artifact.is_complete():
            out[name] = ("missing", [])
        else:
            problems = st.artifact.damage(full=full)
            out[name] = ("DAMAGED" if problems else "done", problems)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Where every artifact of the experiment ($NESTED_CONFIG) is, and its state.")
    ap.add_argument("--verify", action="store_true", help="hash every file of every artifact (default: sizes, "
                                                           "and hashes of files up to 16 MiB)")
    args = ap.parse_args(argv)
    cfg, home = load_config(), nested_home()
    plan = build_plan(cfg, home)
    print(f"experiment '{cfg.name}' (L = {cfg.num_levels}), artifacts under {home}")
    states = artifact_states(plan, full=args.verify)
    for name, st in plan.items():
        state, problems = states[name]
        print(f"  {state:<7} {name:<18} {st.path}")
        for p in problems[:5]:
            print(f"          {p}")
    if states["samples"][0] == "done":
        print(f"sample grid: {plan['samples'].path / 'grid.png'}")
    if states["evaluation"][0] == "done":
        row = plan["evaluation"].artifact.metadata()["row"]
        print(f"evaluation row (in {home / TABLE}): FID {row['fid']:.2f} "
              f"(real-data floor {row['fid_floor']:.2f}), precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
              f"N = {row['num_samples']}, {row['gflops_per_image']:.1f} GFLOPs per image")
    damaged = [n for n, (state, _) in states.items() if state == "DAMAGED"]
    if damaged:
        print(f"damaged: rematerialize {', '.join(damaged)} (each is set aside and rebuilt)")
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
