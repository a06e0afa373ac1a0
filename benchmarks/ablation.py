"""The paper's level ablation (Table 1, and the class-conditional Table 2 direction) on one sweep config.

Materializes the config and all its variants through the Dagster definitions (what they share is one cached
artifact), reads each run's evaluation row, and writes ``benchmarks/results/ablation.json`` (runs of other
profiles already there are kept) and two plots. Run it in the background; it prints the verdicts at the end:

    .venv/bin/python benchmarks/ablation.py --config configs/ablation_cpu.yaml --profile cpu > ablation.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def collect(cfg, home: Path, profile: str) -> list[dict]:
    from pipeline.config import variant_configs
    from pipeline.plan import build_plan

    runs = []
    for variant, vcfg in [("base", cfg), *variant_configs(cfg, check_files=False).items()]:
        plan = build_plan(vcfg, home)
        row = plan["evaluation"].artifact.metadata()["row"]
        tc = vcfg.level0.train
        runs.append({
            "profile": profile, "dataset": f"{vcfg.dataset.source}-{vcfg.dataset.resolution}px", "variant": variant,
            "L": vcfg.num_levels, "sigma_top": vcfg.levels[-1].sigma if vcfg.levels else 0.0,
            "sigmas": [lv.sigma for lv in vcfg.levels], "conditional": vcfg.class_conditional,
            "fid": row["fid"], "fid_floor": row["fid_floor"], "precision": row["precision"], "recall": row["recall"],
            "gflops_per_image": row["gflops_per_image"], "num_samples": row["num_samples"],
            "level0_model": f"{tc.backbone}-{tc.size}, {tc.steps} steps", "sampler": f"{row['sampler']} {row['steps']}",
            "config_fingerprint": row["config_fingerprint"],
            "evaluation_fingerprint": plan["evaluation"].fingerprint,
        })
    return runs


def verdicts(runs: list[dict]) -> dict:
    """SPEC section 8's paper targets, per profile and dataset."""
    out = {}
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = [r for r in runs if (r["profile"], r["dataset"]) == key]
        by = lambda L, cond=False, top=None: next((r for r in rs if r["L"] == L and r["conditional"] == cond  # noqa: E731
                                                   and (top is None or (r["sigma_top"] > 0) == top)), None)
        base, best = by(1), min((r for r in rs if r["L"] > 1 and not r["conditional"] and r["sigma_top"] > 0),
                                key=lambda r: r["fid"], default=None)
        v = {}
        if base:
            v["baseline_valid"] = base["fid"] <= 3 * base["fid_floor"]
            v["baseline_fid_over_floor"] = round(base["fid"] / base["fid_floor"], 2)
        if base and best:
            v["best_nested"] = best["variant"]
            v["fid_ratio_best_vs_L1"] = round(best["fid"] / base["fid"], 3)
            v["fid_target_met"] = best["fid"] <= 0.6 * base["fid"]
            v["gflops_ratio"] = round(best["gflops_per_image"] / base["gflops_per_image"], 3)
            v["gflops_target_met"] = v["gflops_ratio"] <= 1.3
        zero = next((r for r in rs if r["L"] > 1 and not r["conditional"] and r["sigma_top"] == 0), None)
        same_L = next((r for r in rs if zero and r["L"] == zero["L"] and not r["conditional"] and r["sigma_top"] > 0), None)
        if zero and same_L:
            v["sigma_beats_zero"] = same_L["fid"] < zero["fid"]
        c1, c2 = by(1, True), by(2, True)
        if c1 and c2:
            v["conditional_L2_beats_L1"] = c2["fid"] < c1["fid"]
        out[f"{key[0]}/{key[1]}"] = v
    return out


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = sorted((r for r in runs if (r["profile"], r["dataset"]) == key and not r["conditional"]
                     and (r["L"] == 1 or r["sigma_top"] > 0)), key=lambda r: r["L"])
        label = "/".join(key)
        a.plot([r["L"] for r in rs], [r["fid"] for r in rs], "o-", label=label)
        a.axhline(rs[0]["fid_floor"], ls=":", color=a.lines[-1].get_color(), lw=1)
        b.plot([r["gflops_per_image"] for r in rs], [r["fid"] for r in rs], "o-", label=label)
        for r in rs:
            b.annotate(f"L={r['L']}", (r["gflops_per_image"], r["fid"]), fontsize=7)
    a.set(xlabel="L (levels, counting the data)", ylabel="FID", title="FID against L (dotted: real-data floor)")
    b.set(xlabel="sampling GFLOPs per image", ylabel="FID", title="FID against sampling cost")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ablation_cpu.yaml")
    ap.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--collect-only", action="store_true", help="read the finished runs, materialize nothing")
    args = ap.parse_args()

    from dagster import DagsterInstance

    from assets.definitions import build_definitions
    from pipeline.config import load_config, nested_home

    cfg, home = load_config(args.config), nested_home()
    began = time.perf_counter()
    if not args.collect_only:
        defs = build_definitions(cfg, home)
        with DagsterInstance.get() as instance:
            assert defs.resolve_job_def("all_assets").execute_in_process(instance=instance).success
    runs = collect(cfg, home, args.profile)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "ablation.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = [r for r in old if r["profile"] != args.profile] + runs
    result = {
        "command": f"python benchmarks/ablation.py --config {args.config} --profile {args.profile}",
        f"machine_{args.profile}": {"platform": platform.platform(), "processor": platform.processor(),
                                    "python": platform.python_version(),
                                    **{p: version(p) for p in ("torch", "dagster", "diffusers", "clean-fid", "timm")}},
        f"wall_seconds_{args.profile}": round(time.perf_counter() - began, 1),
        "verdicts": verdicts(runs), "runs": runs,
    }
    if path.exists():  # keep the other profile's machine and timing
        result = {**{k: v for k, v in json.loads(path.read_text()).items() if k.endswith(("_cpu", "_gpu"))}, **result}
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, RESULTS / "ablation.png")
    print(json.dumps(result["verdicts"], indent=1))


if __name__ == "__main__":
    main()
