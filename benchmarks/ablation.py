"""The paper's level ablation (Table 1, and the class-conditional Table 2 direction) on one sweep config.

Materializes the config and all its variants through the Dagster definitions (what they share is one cached
artifact), reads each run's evaluation row, and writes ``benchmarks/results/ablation.json`` (runs of other
profiles already there are kept, and so are this profile's runs not built again whose config fingerprint is
unchanged; a whole sweep writes ``machine_<profile>``, a ``--variants`` run adds ``machine_<profile>_<variant>``
beside the earlier ones) and two plots. Run it in the background; it prints the verdicts at the end:

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


def collect(cfg, home: Path, profile: str, required: list[str] = ()) -> list[dict]:
    """The evaluation row of every run that has one; the runs in `required` must have one."""
    from pipeline.plan import build_plan

    runs = []
    for variant, vcfg in sweep_configs(cfg).items():
        plan = build_plan(vcfg, home)
        if not plan["evaluation"].artifact.is_complete():
            if variant in required:
                raise SystemExit(f"run '{variant}' has no evaluation yet: materialize it first")
            continue
        row = plan["evaluation"].artifact.metadata()["row"]
        tc = vcfg.level0.train
        runs.append(with_costs({
            "profile": profile, "dataset": f"{vcfg.dataset.source}-{vcfg.dataset.resolution}px", "variant": variant,
            "L": vcfg.num_levels, "sigma_top": vcfg.levels[-1].sigma if vcfg.levels else 0.0,
            "sigmas": [lv.sigma for lv in vcfg.levels], "conditional": vcfg.class_conditional,
            "train_seed": vcfg.training_seed, "compute_matched": variant in cfg_matched(cfg),
            # fid: the mean over the sampling seeds (what is reported); fid_seeds: each seed's
            "fid": row["fid_mean"], "fid_std": row["fid_std"], "seeds": row["seeds"], "fid_seeds": row["fid_seeds"],
            "oracle_fid": row["oracle_fid"], "oracle_fid_std": row["oracle_fid_std"],
            "fid_floor": row["fid_floor"], "precision": row["precision"], "recall": row["recall"],
            "num_samples": row["num_samples"],
            "level0_model": f"{tc.backbone}-{tc.size}, {tc.steps} steps", "sampler": f"{row['sampler']} {row['steps']}",
            "config_fingerprint": row["config_fingerprint"],
            "evaluation_fingerprint": plan["evaluation"].fingerprint,
        }, vcfg))
    return runs


def keep_recorded(recorded: list[dict], built: list[dict], cfg, profile: str) -> list[dict]:
    """The runs built here, and beside them every run of `profile` recorded earlier that was not built again and
    whose variant still has the config fingerprint it was measured with: a result outlives the artifact cache it
    came from (another machine, a cleared NESTED_HOME), so one variant can be added to a finished sweep."""
    from pipeline.fingerprints import config_fingerprint

    configs, fresh = sweep_configs(cfg), {r["variant"]: r for r in built}
    old = {r["variant"]: r for r in recorded if r["profile"] == profile and r["variant"] not in fresh
           and r["variant"] in configs and config_fingerprint(configs[r["variant"]]) == r["config_fingerprint"]}
    return [fresh.get(v) or with_costs(old[v], configs[v]) for v in configs if v in fresh or v in old]


def sweep_configs(cfg) -> dict:
    from pipeline.config import variant_configs

    return {"base": cfg, **variant_configs(cfg, check_files=False)}


def cfg_matched(cfg) -> list[str]:
    """The compute-matched baselines: L = 1 variants whose level-0 steps differ from the base's."""
    return [v for v, c in sweep_configs(cfg).items()
            if c.num_levels == 1 and c.level0.train.steps != cfg.level0.train.steps]


def materialize_sweep(cfg, home: Path, variants: list[str] | None = None) -> None:
    """The config and its variants (or only `variants`, with what they read), through the Dagster definitions:
    shared artifacts are built once, also across processes running other variants (per-artifact locks)."""
    from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, define_asset_job

    from assets.definitions import build_definitions

    defs, job = build_definitions(cfg, home), "all_assets"
    if variants is not None:
        unknown = set(variants) - set(sweep_configs(cfg))
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; the sweep has {sorted(sweep_configs(cfg))}")
        keys = [AssetKey(["evaluation"] if v == "base" else [v, "evaluation"]) for v in variants]
        job = "selected_runs"
        defs = Definitions.merge(defs, Definitions(jobs=[define_asset_job(job, AssetSelection.assets(*keys).upstream())]))
    with DagsterInstance.get() as instance:
        assert defs.resolve_job_def(job).execute_in_process(instance=instance).success


def with_costs(run: dict, vcfg) -> dict:
    """The fields a run's config decides: its guidance, its sampling cost in both conventions (one image:
    steps x forwards, x2 where guidance runs the unconditional pass; one forward of every level: the paper's
    27 -> 34 GFLOPs) and its training cost (all levels; flop_counter's 2 FLOPs per multiply-add, backward = 2x
    forward)."""
    from pipeline.costs import cost_table, train_gflops

    costs = cost_table(vcfg)
    return {**run, "guidance": vcfg.guidance(), "gflops_per_image": costs["sampling_gflops_per_image"],
            "gflops_per_forward": costs["total_gflops_per_forward"], "train_gflops": train_gflops(vcfg)}


def refresh(recorded: list[dict], cfg, profile: str) -> list[dict]:
    """The recorded runs of `profile` with their config-decided fields recomputed by the code on this checkout,
    after checking that each was made with the config as it is now."""
    from pipeline.fingerprints import config_fingerprint

    configs = sweep_configs(cfg)
    out = []
    for r in recorded:
        if r["profile"] != profile:
            continue
        vcfg = configs.get(r["variant"])
        if vcfg is None or config_fingerprint(vcfg) != r["config_fingerprint"]:
            raise SystemExit(f"run '{r['variant']}' ({r['config_fingerprint']}) was made with another config than "
                             f"{profile}'s: rerun the sweep")
        out.append(with_costs(r, vcfg))
    return out


def pooled(rs: list[dict]) -> dict | None:
    """FID of a group of runs (training seeds) over all their sampling seeds: mean, std, and how many."""
    import numpy as np

    fids = [f for r in rs for f in r["fid_seeds"]]
    if not fids:
        return None
    return {"variants": [r["variant"] for r in rs], "L": rs[0]["L"], "fid": float(np.mean(fids)),
            "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else None, "n": len(fids),
            **{k: rs[0][k] for k in ("gflops_per_image", "gflops_per_forward", "train_gflops")}}


def compare(better: dict | None, worse: dict | None, ratio_target: float | None = None) -> dict | None:
    """Is `better` below `worse` beyond the noise (std: the larger of the two groups' FID stds over seeds, each
    group's own in std_a and std_b)?
    A gap inside one std is 'inconclusive'; one to two stds 'weak' (a direction, not a result); beyond two
    stds 'met', unless the ratio target is missed ('missed': a real gain, too small) or `better` is worse."""
    if not better or not worse:
        return None
    std = max(s for s in (better["fid_std"], worse["fid_std"], 0.0) if s is not None)
    gap, ratio = worse["fid"] - better["fid"], better["fid"] / worse["fid"]
    if abs(gap) <= std:
        verdict = "inconclusive"
    elif gap < 0:
        verdict = "missed"
    elif gap <= 2 * std:
        verdict = "weak"
    else:
        verdict = "met" if ratio_target is None or ratio <= ratio_target else "missed"
    own_std = lambda g: None if g["fid_std"] is None else round(g["fid_std"], 2)  # noqa: E731
    return {"a": better["variants"], "b": worse["variants"], "fid_a": round(better["fid"], 2),
            "fid_b": round(worse["fid"], 2), "std_a": own_std(better), "std_b": own_std(worse),
            "gap": round(gap, 2), "std": round(std, 2), "ratio": round(ratio, 3),
            "beyond_two_std": gap > 2 * std, "verdict": verdict}


def verdicts(runs: list[dict]) -> dict:
    """The paper's targets (benchmarks/RESULTS.md), per profile and dataset, on seed means (module docstring)."""
    out = {}
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = [r for r in runs if (r["profile"], r["dataset"]) == key]
        base_w = next((r["guidance"] for r in rs if r["variant"] == "base"), None)

        def group(L, cond=False, top=True, matched=False, same_guidance=True):
            """Runs that differ only by their training seed (and the given settings) are pooled."""
            return pooled([r for r in rs if r["L"] == L and r["conditional"] == cond and r["compute_matched"] == matched
                           and (L == 1 or (r["sigma_top"] > 0) == top)
                           and (base_w is None or (r["guidance"] == base_w[:L]) == same_guidance)])

        L1, L3, L2 = group(1), group(3), group(2)
        v = {}
        if L1:
            v["baseline_fid_over_floor"] = round(L1["fid"] / rs[0]["fid_floor"], 2)
            v["baseline_valid"] = L1["fid"] <= 3 * rs[0]["fid_floor"]
        if L1 and L3:
            v["L3_vs_L1"] = {**compare(L3, L1, 0.6), "target": "FID(L=3) <= 0.6 x FID(L=1), gap > 2 std"}
            v["gflops_per_image_ratio"] = round(L3["gflops_per_image"] / L1["gflops_per_image"], 3)
            v["gflops_target_met"] = v["gflops_per_image_ratio"] <= 1.3
            v["gflops_per_forward_ratio"] = round(L3["gflops_per_forward"] / L1["gflops_per_forward"], 3)
        if L1 and L2:
            v["L2_vs_L1"] = compare(L2, L1)
        cheap = group(3, same_guidance=False)  # other guidance: e.g. none at level 0, within the cost budget
        if L1 and cheap:
            v["L3_other_guidance_vs_L1"] = {**compare(cheap, L1, 0.6),
                                            "gflops_per_image_ratio": round(cheap["gflops_per_image"] / L1["gflops_per_image"], 3)}
        v["L3_vs_compute_matched_L1"] = compare(L3, group(1, matched=True))
        v["sigma_beats_zero"] = compare(L3, group(3, top=False))
        v["conditional_L2_beats_L1"] = compare(group(2, cond=True), group(1, cond=True))
        # the oracle of the runs the L = 3 target is read from (not of sigma 0's or another guidance's)
        oracle = [r for r in rs if L3 and r["variant"] in L3["variants"] and r.get("oracle_fid") is not None]
        if oracle and L1:
            o = sum(r["oracle_fid"] for r in oracle) / len(oracle)
            v["oracle_fid_L3"] = round(o, 2)
            v["oracle_over_floor"] = round(o / rs[0]["fid_floor"], 3)
            v["oracle_target_met"] = o <= 1.3 * rs[0]["fid_floor"]
            v["oracle_vs_L1"] = round(o / L1["fid"], 3)
        out[f"{key[0]}/{key[1]}"] = {k: x for k, x in v.items() if x is not None}
    return out


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for key in sorted({(r["profile"], r["dataset"]) for r in runs}):
        rs = [r for r in runs if (r["profile"], r["dataset"]) == key and not r["conditional"]]
        label = "/".join(key)
        # FID against L: sigma > 0 at the top, the base's training steps and guidance; training seeds pooled
        # A sweep without its base (one variant run alone) pools each L at the first run's guidance
        ref = next((r for r in rs if r["variant"] == "base"), rs[0])
        line = [g for L in sorted({r["L"] for r in rs}) if (g := pooled(
            [r for r in rs if r["L"] == L and not r["compute_matched"] and (L == 1 or r["sigma_top"] > 0)
             and r["guidance"][:L] == ref["guidance"][:L]]))]
        a.errorbar([g["L"] for g in line], [g["fid"] for g in line],
                   yerr=[g["fid_std"] or 0 for g in line], fmt="o-", capsize=3, label=label)
        a.axhline(rs[0]["fid_floor"], ls=":", color=a.lines[-1].get_color(), lw=1)
        b.errorbar([r["gflops_per_image"] for r in rs], [r["fid"] for r in rs], yerr=[r["fid_std"] or 0 for r in rs],
                   fmt="o", capsize=3, label=label)
        for r in rs:
            b.annotate(r["variant"], (r["gflops_per_image"], r["fid"]), fontsize=7)
    a.set_xticks(sorted({r["L"] for r in runs}))
    a.set(xlabel="L (levels, counting the data)", ylabel="FID (mean +- std over seeds)",
          title="FID against L (dotted: real-data floor)")
    b.set(xlabel="sampling GFLOPs per image", ylabel="FID", title="FID against sampling cost")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def markdown(runs: list[dict]) -> str:
    """The runs as RESULTS.md's table: FID as mean +- std over the sampling seeds."""
    base = next((r for r in runs if r["variant"] == "L1"), None)
    lines = ["| run | L | sigmas | labels | train seed | FID (mean +- std, seeds) | oracle FID | FID / floor | precision "
             "| recall | sampling GFLOPs / image | GFLOPs / forward | train GFLOPs |", "|" + "---|" * 13]
    for r in runs:
        rel = lambda k: f" ({r[k] / base[k]:.2f}x)" if base else ""  # noqa: E731
        fid = f"{r['fid']:.2f} +- {r['fid_std']:.2f}" if r.get("fid_std") is not None else f"{r['fid']:.2f}"
        oracle = (f"{r['oracle_fid']:.2f} +- {r['oracle_fid_std']:.2f}" if r.get("oracle_fid_std") is not None
                  else "-" if r.get("oracle_fid") is None else f"{r['oracle_fid']:.2f}")
        lines.append(f"| {r['variant']} | {r['L']} | {', '.join(map(str, r['sigmas'])) or '-'} | "
                     f"{'yes' if r['conditional'] else 'no'} | {r['train_seed']} | {fid} | {oracle} | "
                     f"{r['fid'] / r['fid_floor']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['gflops_per_image']:.2f}{rel('gflops_per_image')} | "
                     f"{r['gflops_per_forward']:.3f}{rel('gflops_per_forward')} | {r['train_gflops']:.3g} |")
    return "\n".join(lines)


def dry_run(cfg) -> None:
    """What the sweep would run: every run's config is valid, its costs and its fingerprint; nothing is built."""
    from pipeline.fingerprints import config_fingerprint

    print("| run | L | train seed | level-0 steps | GFLOPs / forward | sampling GFLOPs / image | train GFLOPs | config |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, vcfg in sweep_configs(cfg).items():
        r = with_costs({}, vcfg)
        print(f"| {variant} | {vcfg.num_levels} | {vcfg.training_seed} | {vcfg.level0.train.steps} | "
              f"{r['gflops_per_forward']:.4f} | {r['gflops_per_image']:.2f} | {r['train_gflops']:.4g} | "
              f"{config_fingerprint(vcfg)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ablation_cpu.yaml")
    ap.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--variants", nargs="+", help="materialize only these runs ('base' is the config itself); run "
                                                  "two such processes on disjoint runs to use two cores")
    ap.add_argument("--out", type=Path, default=RESULTS / "ablation.json",
                    help="the results file (its plot beside it, .png): a diagnostic sweep writes its own")
    ap.add_argument("--collect-only", action="store_true", help="read the finished runs, materialize nothing")
    ap.add_argument("--dry-run", action="store_true", help="validate the sweep and print its runs' costs, build nothing")
    ap.add_argument("--from-json", action="store_true",
                    help="materialize and read nothing: recompute costs, verdicts and plots of the runs recorded in "
                         "ablation.json (refused if the config changed since)")
    args = ap.parse_args()

    from pipeline.config import load_config, nested_home

    cfg, home = load_config(args.config, check_files=not (args.from_json or args.dry_run)), nested_home()
    if args.dry_run:
        return dry_run(cfg)
    path = args.out
    recorded = json.loads(path.read_text()) if path.exists() else {"runs": []}
    began = time.perf_counter()
    if args.from_json:
        runs = refresh(recorded["runs"], cfg, args.profile)
        result = {k: v for k, v in recorded.items() if k not in ("verdicts", "runs")}  # where the runs were made
    else:
        from pipeline.runtime import cpu_has_native_bf16

        if not args.collect_only:
            materialize_sweep(cfg, home, args.variants)
        required = [] if args.collect_only else args.variants or list(sweep_configs(cfg))
        runs = keep_recorded(recorded["runs"], collect(cfg, home, args.profile, required), cfg, args.profile)
        p = args.profile
        command = (f"python benchmarks/ablation.py --config {args.config} --profile {p}"
                   + (f" --variants {' '.join(args.variants)}" if args.variants else "")
                   + (" --collect-only" if args.collect_only else "")
                   + ("" if args.out == RESULTS / "ablation.json" else f" --out {args.out}"))
        made = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_native_bf16": cpu_has_native_bf16(), "python": platform.python_version(),
                            **{k: version(k) for k in ("torch", "dagster", "diffusers", "clean-fid", "timm")}},
                "wall_seconds": round(time.perf_counter() - began, 1)}
        if args.variants or args.collect_only:
            # a part of the sweep: the provenance of the runs made earlier stays; what was built now goes beside it
            result = {k: v for k, v in recorded.items() if k not in ("verdicts", "runs")}
            result["commands"] = [*result.get("commands", []), command]
            for v in [] if args.collect_only else args.variants:
                result[f"machine_{p}_{v}"], result[f"wall_seconds_{p}_{v}"] = made["machine"], made["wall_seconds"]
        else:
            result = {k: v for k, v in recorded.items() if k.endswith(("_cpu", "_gpu"))}  # the other profile's
            result.update({"command": command, f"machine_{p}": made["machine"],
                           f"wall_seconds_{p}": made["wall_seconds"]})
        result["conventions"] = (
            "FLOPs from torch.utils.flop_counter: 2 per multiply-add. gflops_per_forward: one forward of every level "
            "for one image (the paper's). gflops_per_image: sampling one image (steps x forwards, x2 where guidance "
            "runs the unconditional pass). train_gflops: all levels, steps x batch x 3 forwards (backward = 2 "
            "forwards). fid: mean over the sampling seeds; verdicts pool the training seeds.")
    runs = [r for r in recorded["runs"] if r["profile"] != args.profile] + runs
    result.update({"verdicts": verdicts(runs), "runs": runs})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, path.with_suffix(".png"))
    print(markdown([r for r in runs if r["profile"] == args.profile]))
    print(json.dumps(result["verdicts"], indent=1))


if __name__ == "__main__":
    main()
