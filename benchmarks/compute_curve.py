"""FID against training compute (issue 36, item 1): plain diffusion (L = 1), the semantic-only L = 3 and the
nested_msf stack, each trained to budgets of 1x to 8x plain diffusion's 3000-step training FLOPs, every level's
EMA evaluated at each budget over the families' reported sampling seeds (100-102).

The arms are families_cpu.yaml's runs: `L1`, `base` (the semantic L = 3) and `nested_msf_res9k_f81k` (the stack).
An arm keeps its per-level training lengths in proportion (the stack's and the L = 3's are f81k's: level 0 9000,
the 8x8 base 27000, the 4x4x32 level 81000, the 2x2x16 level 27000; so L = 3 at f81k's lengths is on its curve, item
2), scaled to each budget's FLOPs (pipeline.costs.train_gflops). The budgets of one arm and training seed are one
run: each budget's models continue the previous budget's (pipeline/train.py), so checkpoints of one long run are
the budgets, materialized through the Dagster definitions as variants `<arm>_b<budget>_s<seed>`.

Writes benchmarks/results/compute_curve.json (points kept across invocations and machines: one arm and seed at a
time fits a session) and compute_curve.png; `ratios` holds each arm against plain diffusion at equal training
FLOPs per budget, the mean over training seeds of the per-seed FID ratio with its 95% t-interval:

    NESTED_HOME=... DAGSTER_HOME=... .venv/bin/python benchmarks/compute_curve.py --arm plain --train-seed 0 \\
        > curve_plain_s0.log 2>&1 &
    .venv/bin/python benchmarks/compute_curve.py --dry-run              # every arm's per-level steps per budget
    .venv/bin/python benchmarks/compute_curve.py --from-json            # ratios and plot again from the JSON
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import yaml

from families import ablation  # benchmarks/ is the script's own directory: on sys.path when it runs

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = "configs/families_cpu.yaml"
ARMS = {"plain": "L1", "semantic_L3": "base", "nested_msf": "nested_msf_res9k_f81k"}  # arm -> families run
BUDGETS = (1, 2, 3, 5, 8)  # x plain diffusion's training FLOPs at its 3000 steps
ROW_FIELDS = ("fid_seeds", "fid_mean", "fid_std", "seeds", "fid_floor", "kid", "fid_holdout", "kid_holdout",
              "precision", "recall", "near_copy_fraction", "near_copy_quantile", "num_samples", "config_fingerprint")


def families_data() -> dict:
    return yaml.safe_load(Path(CONFIG).read_text())


def arm_overrides(data: dict, arm: str) -> dict:
    run = ARMS[arm]
    if run == "base":  # the semantic levels and level 0 at the stack's lengths (f81k: 81000, 27000; 9000)
        return {"level0.train.steps": 9000, "levels.0.train.steps": 81000, "levels.1.train.steps": 27000}
    return dict(data["variants"][run])


def level_steps(cfg) -> list[int]:
    return [cfg.train_config(level).steps for level in range(cfg.num_levels)]


def steps_overrides(steps: list[int]) -> dict:
    return {("level0.train.steps" if level == 0 else f"levels.{level - 1}.train.steps"): s
            for level, s in enumerate(steps)}


def arm_configs(data: dict) -> dict:
    """Each arm at its own per-level lengths (before scaling to a budget)."""
    from pipeline.config import parse_config, variant_configs

    return variant_configs(parse_config({**{k: v for k, v in data.items() if k != "variants"},
                                         "variants": {a: arm_overrides(data, a) for a in ARMS}}, check_files=False),
                           check_files=False)


def budget_steps(data: dict, arm: str) -> dict[float, list[int]]:
    """Each budget's per-level steps: the arm's own lengths scaled to `budget` x plain diffusion's training FLOPs."""
    from pipeline.costs import train_gflops

    arms = arm_configs(data)
    scale = train_gflops(arms["plain"]) / train_gflops(arms[arm])
    return {b: [max(1, round(s * b * scale)) for s in level_steps(arms[arm])] for b in BUDGETS}


def variant(arm: str, budget: float, seed: int) -> str:
    return f"{arm}_b{budget:g}_s{seed}"


def curve_config(data: dict, arms: list[str], seeds: list[int]):
    """families_cpu.yaml with the curve's runs as its variants (and none of its own): `<arm>_b<budget>_s<seed>`."""
    from pipeline.config import parse_config

    variants = {}
    for arm in arms:
        own = arm_overrides(data, arm)
        for b, steps in budget_steps(data, arm).items():
            for seed in seeds:
                # training seed 0 is the config's own seed: left unset, so plain at 1x is families' L1 itself
                variants[variant(arm, b, seed)] = {**own, **steps_overrides(steps),
                                                   **({"train_seed": seed} if seed else {}),
                                                   "sampling.oracle": False}
    return parse_config({**{k: v for k, v in data.items() if k != "variants"}, "variants": variants},
                        source=CONFIG)


def model_seconds(plan, cfg) -> float:
    """Every level's training time as it ran, the earlier budgets' that it continued included."""
    total = 0.0
    for level in range(cfg.num_levels):
        meta = plan[f"level_{level}_model"].artifact.metadata()
        total += meta["seconds"] + ((meta.get("continued_from") or {}).get("seconds") or 0.0)
    return round(total, 1)


def point(arm: str, budget: float, seed: int, vcfg, home: Path, plain_gflops: float) -> dict | None:
    from pipeline.costs import cost_table, train_gflops
    from pipeline.plan import build_plan

    plan = build_plan(vcfg, home)
    if not plan["evaluation"].artifact.is_complete():
        return None
    row = plan["evaluation"].artifact.metadata()["row"]
    gflops = train_gflops(vcfg)
    return {"arm": arm, "budget": budget, "train_seed": seed, "variant": variant(arm, budget, seed),
            "level_steps_trained": level_steps(vcfg), "train_gflops": gflops,
            "train_gflops_ratio": round(gflops / plain_gflops, 4),
            "gflops_per_image": cost_table(vcfg)["sampling_gflops_per_image"],
            "train_seconds": model_seconds(plan, vcfg), "guidance": vcfg.guidance(),
            "sampling_steps": vcfg.sampling_steps(), **{k: row[k] for k in ROW_FIELDS}}


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean and its two-sided t-interval over independent runs (None with one run: no interval)."""
    import numpy as np
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


def ratios(points: list[dict]) -> list[dict]:
    """Each arm against plain diffusion at each budget (equal training FLOPs): per training seed the ratio of its
    FID mean over the sampling seeds to plain diffusion's of the same training seed; their mean and t-interval."""
    by = {(p["arm"], p["budget"], p["train_seed"]): p for p in points}
    out = []
    for arm in [a for a in ARMS if a != "plain"]:
        for b in BUDGETS:
            seeds = sorted(s for (a, bb, s) in by if a == arm and bb == b and ("plain", b, s) in by)
            if not seeds:
                continue
            per_seed = [by[arm, b, s]["fid_mean"] / by["plain", b, s]["fid_mean"] for s in seeds]
            mean, lo, hi = t_interval(per_seed)
            out.append({"arm": arm, "budget": b, "equal": "training_flops", "training_seeds": len(seeds),
                        "train_gflops_ratio": round(by[arm, b, seeds[0]]["train_gflops"]
                                                    / by["plain", b, seeds[0]]["train_gflops"], 4),
                        "gflops_per_image_ratio": round(by[arm, b, seeds[0]]["gflops_per_image"]
                                                        / by["plain", b, seeds[0]]["gflops_per_image"], 3),
                        "ratio": round(mean, 4), "ci95": None if lo is None else [round(lo, 4), round(hi, 4)],
                        "per_seed": [round(r, 4) for r in per_seed]})
    return out


def curves(points: list[dict]) -> list[dict]:
    """Each arm's FID at each budget: the mean over its training seeds of their means over the sampling seeds."""
    out = []
    for arm in ARMS:
        for b in BUDGETS:
            ps = [p for p in points if p["arm"] == arm and p["budget"] == b]
            if ps:
                mean, lo, hi = t_interval([p["fid_mean"] for p in ps])
                out.append({"arm": arm, "budget": b, "train_gflops": ps[0]["train_gflops"], "training_seeds": len(ps),
                            "fid": round(mean, 3), "ci95": None if lo is None else [round(lo, 3), round(hi, 3)],
                            "sampling_fid_std": [round(p["fid_std"], 3) for p in ps]})
    return out


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rx) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    for arm in ARMS:
        cs = [c for c in result["curves"] if c["arm"] == arm]
        if not cs:
            continue
        x = [c["budget"] for c in cs]
        y = [c["fid"] for c in cs]
        err = [[c["fid"] - c["ci95"][0] for c in cs], [c["ci95"][1] - c["fid"] for c in cs]] \
            if all(c["ci95"] for c in cs) else None
        seeds = max(c["training_seeds"] for c in cs)
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=f"{arm} (up to {seeds} training seed{'s' * (seeds > 1)})")
        for p in (p for p in result["points"] if p["arm"] == arm):
            ax.plot(p["budget"], p["fid_mean"], ".", color="gray", alpha=0.5)
    ax.set(xscale="log", xlabel="training FLOPs (x plain diffusion's 3000 steps)", ylabel="FID (3 sampling seeds)",
           title="FID against training compute, 16 px emoji (CPU)")
    ax.set_xticks(BUDGETS, [f"{b}x" for b in BUDGETS])
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for arm in [a for a in ARMS if a != "plain"]:
        rs = [r for r in result["ratios"] if r["arm"] == arm and r["equal"] == "training_flops"]
        if rs:
            err = [[r["ratio"] - r["ci95"][0] for r in rs], [r["ci95"][1] - r["ratio"] for r in rs]] \
                if all(r["ci95"] for r in rs) else None
            rx.errorbar([r["budget"] for r in rs], [r["ratio"] for r in rs], yerr=err, fmt="o-", capsize=3, label=arm)
    rx.axhline(1.0, color="gray", lw=1)
    rx.set(xscale="log", xlabel="training FLOPs (x plain diffusion's 3000 steps)",
           ylabel="FID / plain diffusion's (95% t-interval)", title="At equal training FLOPs")
    rx.set_xticks(BUDGETS, [f"{b}x" for b in BUDGETS])
    for a in (ax, rx):
        a.set_xlim(0.8, 10)
    rx.grid(alpha=0.3)
    if rx.get_legend_handles_labels()[0]:
        rx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arm", choices=list(ARMS), nargs="+", default=list(ARMS))
    ap.add_argument("--train-seed", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--budgets", type=float, nargs="+", help="only these of BUDGETS (default: all, in order)")
    ap.add_argument("--out", type=Path, default=RESULTS / "compute_curve.json")
    ap.add_argument("--dry-run", action="store_true", help="print each arm's per-level steps per budget")
    ap.add_argument("--collect-only", action="store_true", help="read the finished budgets, materialize nothing")
    ap.add_argument("--from-json", action="store_true", help="read nothing: ratios, curves and plot from --out")
    args = ap.parse_args()

    from pipeline.config import nested_home
    from pipeline.costs import train_gflops

    data = families_data()
    if args.dry_run:
        for arm in args.arm:
            for b, steps in budget_steps(data, arm).items():
                print(f"{arm:12s} {b:g}x: level steps (level 0 up) {steps}")
        return
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}
    points = earlier["points"]
    if not args.from_json:
        cfg, home = curve_config(data, args.arm, args.train_seed), nested_home()
        configs = ablation.sweep_configs(cfg)
        plain_gflops = train_gflops(arm_configs(data)["plain"])
        budgets = [b for b in BUDGETS if args.budgets is None or b in args.budgets]
        for arm in args.arm:
            for seed in args.train_seed:
                for b in budgets:  # in order: each budget continues the one before
                    name = variant(arm, b, seed)
                    if not args.collect_only:
                        ablation.materialize_sweep(cfg, home, [name])
                    p = point(arm, b, seed, configs[name], home, plain_gflops)
                    if p is None:
                        continue
                    points = [q for q in points if q["variant"] != name] + [p]
                    print(f"{name}: FID {p['fid_mean']:.2f} +- {p['fid_std']:.2f}, KID {p['kid']:.4f}, "
                          f"steps {p['level_steps_trained']}, {p['train_seconds']:.0f} s of training", flush=True)
                    write(args.out, earlier, points, data)  # after every budget: a stopped run keeps what it measured
    write(args.out, earlier, points, data)


def write(out: Path, earlier: dict, points: list[dict], data: dict) -> None:
    from importlib.metadata import version

    points = sorted(points, key=lambda p: (list(ARMS).index(p["arm"]), p["train_seed"], p["budget"]))
    result = {"command": "python benchmarks/compute_curve.py --arm ARM --train-seed SEED", "config": CONFIG,
              "arms": ARMS, "budgets": list(BUDGETS),
              "budget_steps": {arm: {f"{b:g}": s for b, s in budget_steps(data, arm).items()} for arm in ARMS},
              "conventions": "budget: training FLOPs (pipeline.costs.train_gflops: every level, 3 forwards a step, 2 "
                             "FLOPs per multiply-add) as a multiple of plain diffusion's at 3000 steps; each point's "
                             "FID is the mean over the sampling seeds of its training seed's EMA models; ratios pair "
                             "the training seeds (arm seed s over plain seed s) and give the mean ratio with a 95% "
                             "t-interval over them; train_seconds: every level's training as it ran, the budgets it "
                             "continued included",
              "machines": {**earlier.get("machines", {}),
                           platform.node(): {"processor": platform.processor() or platform.machine(),
                                             "torch": version("torch"), "python": platform.python_version()}},
              "curves": curves(points), "ratios": ratios(points), "points": points}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
