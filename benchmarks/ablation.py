"""The paper's level ablation (Table 1, and the class-conditional Table 2 direction) on one sweep config.

Materializes the config and all its variants through the Dagster definitions (what they share is one cached
artifact), reads each run's evaluation row, and writes ``benchmarks/results/ablation.json`` (runs of other
profiles already there are kept) and two plots. Run it in the background; it prints the verdicts at the end:

    .venv/bin/python benchmarks/ablation.py --config configs/ablation_cpu.yaml --profile cpu > ablation.log 2>&1 &

``--from-json`` materializes and reads nothing: it recomputes the config-decided fields (guidance, costs), the
verdicts and the plots of the runs recorded in the JSON, after checking each run's config fingerprint.
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
        runs.append(with_costs({
            "profile": profile, "dataset": f"{vcfg.dataset.source}-{vcfg.dataset.resolution}px", "variant": variant,
            "L": vcfg.num_levels, "sigma_top": vcfg.levels[-1].sigma if vcfg.levels else 0.0,
            "sigmas": [lv.sigma for lv in vcfg.levels], "conditional": vcfg.class_conditional,
            "fid": row["fid"], "fid_floor": row["fid_floor"], "precision": row["precision"], "recall": row["recall"],
            "num_samples": row["num_samples"],
            "level0_model": f"{tc.backbone}-{tc.size}, {tc.steps} steps", "sampler": f"{row['sampler']} {row['steps']}",
            "config_fingerprint": row["config_fingerprint"],
            "evaluation_fingerprint": plan["evaluation"].fingerprint,
        }, vcfg))
    return runs


def materialize_sweep(cfg, home: Path) -> None:
    """The config and all its variants, through the Dagster definitions (shared artifacts are built once)."""
    from dagster import DagsterInstance

    from assets.definitions import build_definitions

    with DagsterInstance.get() as instance:
        assert build_definitions(cfg, home).resolve_job_def("all_assets").execute_in_process(instance=instance).success


def with_costs(run: dict, vcfg) -> dict:
    """The fields a run's config decides: its guidance, and its sampling cost in both conventions
    (one image: steps x forwards, x2 where guidance runs the unconditional pass; one forward of every level:
    the paper's 27 -> 34 GFLOPs)."""
    from pipeline.costs import cost_table

    costs = cost_table(vcfg)
    return {**run, "guidance": vcfg.guidance(), "gflops_per_image": costs["sampling_gflops_per_image"],
            "gflops_per_forward": costs["total_gflops_per_forward"]}


def refresh(recorded: list[dict], cfg, profile: str) -> list[dict]:
    """The recorded runs of `profile` with their config-decided fields recomputed by the code on this checkout,
    after checking that each was made with the config as it is now."""
    from pipeline.config import config_fingerprint, variant_configs

    configs = {"base": cfg, **variant_configs(cfg, check_files=False)}
    out = []
    for r in recorded:
        if r["profile"] != profile:
            continue
        vcfg = configs.get(r["variant"])
        if vcfg is None or config_fingerprint(vcfg) != r["config_fingerprint"]:
            raise SystemExit(f"run '{r['variant']}' ({r['config_fingerprint']}) was made with another config than "
                             f"{profile}'s: rerun the sweep")
        out.append(with_costs(r, vcfg))
    missing = set(configs) - {r["variant"] for r in out}
    if missing:
        raise SystemExit(f"no recorded {profile} run for {sorted(missing)}: rerun the sweep")
    return out


def verdicts(runs: list[dict]) -> dict:
    """SPEC section 8's paper targets, per profile and dataset."""
    out = {}
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = [r for r in runs if (r["profile"], r["dataset"]) == key]
        by = lambda L, cond=False, top=None: next((r for r in rs if r["L"] == L and r["conditional"] == cond  # noqa: E731
                                                   and (top is None or (r["sigma_top"] > 0) == top)), None)
        nested = [r for r in rs if r["L"] > 1 and not r["conditional"] and r["sigma_top"] > 0]
        base, best = by(1), min(nested, key=lambda r: r["fid"], default=None)
        v = {}
        if base:
            v["baseline_valid"] = base["fid"] <= 3 * base["fid_floor"]
            v["baseline_fid_over_floor"] = round(base["fid"] / base["fid_floor"], 2)
        if base and best:
            v["best_nested"] = best["variant"]
            v["fid_ratio_best_vs_L1"] = round(best["fid"] / base["fid"], 3)
            v["fid_target_met"] = best["fid"] <= 0.6 * base["fid"]
            v["gflops_ratio"] = round(best["gflops_per_image"] / base["gflops_per_image"], 3)
            v["gflops_per_forward_ratio"] = round(best["gflops_per_forward"] / base["gflops_per_forward"], 3)
            v["gflops_target_met"] = v["gflops_ratio"] <= 1.3
            # the best run within the sampling budget, where the best overall is over it
            cheap = min((r for r in nested if r["gflops_per_image"] <= 1.3 * base["gflops_per_image"]),
                        key=lambda r: r["fid"], default=None)
            if cheap:
                v["best_within_1.3x_gflops"] = cheap["variant"]
                v["fid_ratio_within_1.3x_gflops"] = round(cheap["fid"] / base["fid"], 3)
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

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = [r for r in runs if (r["profile"], r["dataset"]) == key and not r["conditional"]]
        label = "/".join(key)
        # FID against L: the runs sampled with the base experiment's guidance, sigma > 0 at the top
        base_w = next(r["guidance"] for r in rs if r["variant"] == "base")
        line = sorted((r for r in rs if (r["L"] == 1 or r["sigma_top"] > 0)
                       and r["guidance"] == base_w[: r["L"]]), key=lambda r: r["L"])
        a.plot([r["L"] for r in line], [r["fid"] for r in line], "o-", label=label)
        a.axhline(line[0]["fid_floor"], ls=":", color=a.lines[-1].get_color(), lw=1)
        b.scatter([r["gflops_per_image"] for r in rs], [r["fid"] for r in rs], label=label)
        for r in rs:
            b.annotate(f"{r['variant']} (L={r['L']})", (r["gflops_per_image"], r["fid"]), fontsize=7)
    a.set_xticks(sorted({r["L"] for r in runs}))
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
    ap.add_argument("--from-json", action="store_true",
                    help="materialize and read nothing: recompute costs, verdicts and plots of the runs recorded in "
                         "ablation.json (refused if the config changed since)")
    args = ap.parse_args()

    from pipeline.config import load_config, nested_home

    cfg, home = load_config(args.config, check_files=not args.from_json), nested_home()
    path = RESULTS / "ablation.json"
    recorded = json.loads(path.read_text()) if path.exists() else {"runs": []}
    began = time.perf_counter()
    if args.from_json:
        runs = refresh(recorded["runs"], cfg, args.profile)
        result = {k: v for k, v in recorded.items() if k not in ("verdicts", "runs")}  # where the runs were made
    else:
        from pipeline.train import cpu_has_native_bf16

        if not args.collect_only:
            materialize_sweep(cfg, home)
        runs = collect(cfg, home, args.profile)
        result = {k: v for k, v in recorded.items() if k.endswith(("_cpu", "_gpu"))}  # the other profile's
        result.update({
            "command": f"python benchmarks/ablation.py --config {args.config} --profile {args.profile}",
            f"machine_{args.profile}": {"platform": platform.platform(), "processor": platform.processor(),
                                        "cpu_native_bf16": cpu_has_native_bf16(), "python": platform.python_version(),
                                        **{p: version(p) for p in ("torch", "dagster", "diffusers", "clean-fid", "timm")}},
            f"wall_seconds_{args.profile}": round(time.perf_counter() - began, 1),
        })
    runs = [r for r in recorded["runs"] if r["profile"] != args.profile] + runs
    result.update({"verdicts": verdicts(runs), "runs": runs})
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, RESULTS / "ablation.png")
    print(json.dumps(result["verdicts"], indent=1))


if __name__ == "__main__":
    main()
