"""The seeds' hierarchy families side by side (issue 15): nested semantic latents, MSF's base + residual, a cascade
and Matryoshka's joint resolutions, against plain diffusion, compared at matched sampling budgets.

Runs `configs/families_cpu.yaml` and its variants through the Dagster definitions with benchmarks/ablation.py's
machinery (one cached artifact for what runs share). A run whose config fingerprint is already recorded in
ablation.json (the nested base and the L = 1 baseline are that sweep's configs) is read from there, not rebuilt.
Writes benchmarks/results/families.json (the ablation's fields plus `family`, `level_steps`, `recorded_in` and
the measured seconds) and families.png; prints the table and the verdicts:

    DAGSTER_HOME=$PWD/.dagster_home .venv/bin/python benchmarks/families.py > families.log 2>&1 &
    .venv/bin/python benchmarks/families.py --from-json     # verdicts, table and plot again from the JSON

Verdicts: runs are grouped into budgets (sampling GFLOPs per image within `BUDGET_SPREAD` of the group's
cheapest); in each budget the lowest FID wins and is compared with the runner-up, and every family is compared
with plain diffusion, all with ablation.compare's noise rule (a gap inside one seed std is inconclusive).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET_SPREAD = 1.3  # the ablation's cost target: runs within 1.3x of each other's sampling cost share a budget
FAMILIES = {"semantic": "nested", "pixel_base": "msf", "cascade": "cascade"}  # levels[0].kind -> family


def _ablation():
    spec = importlib.util.spec_from_file_location("ablation", Path(__file__).resolve().parent / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ablation = _ablation()


def family(cfg) -> str:
    if cfg.level0.train.backbone == "matryoshka":
        return "matryoshka"
    if not cfg.levels:
        return "plain"
    if cfg.levels[0].kind == "pixel_base" and len(cfg.levels) > 1:
        return "nested_msf"  # semantic levels over MSF's pixel base
    return FAMILIES[cfg.levels[0].kind]


def arm(cfg) -> str:
    """What a run measures, whatever its training seed: runs that differ only in train_seed share an arm (the
    config fingerprint with the seed left out), and their FIDs are pooled in the verdicts."""
    from pipeline.fingerprints import config_fingerprint

    return config_fingerprint(cfg.model_copy(update={"train_seed": None}))


def arm_of(run: dict) -> str:
    return run.get("arm", run["variant"])  # a run recorded before arms existed is an arm of its own


def seconds(plan, cfg) -> dict:
    """What the run's artifacts measured: training (all levels, as they ran: see the JSON's conventions) and
    sampling num_samples images once."""
    models = [plan[f"level_{lv}_model"].artifact.metadata() for lv in range(cfg.num_levels)]
    samples = plan["samples"].artifact.metadata()
    return {"train_seconds": round(sum(m["seconds"] for m in models), 1),
            "sample_seconds": samples.get("sample_seconds"), "images_per_sec": samples.get("images_per_sec")}


def with_family(run: dict, vcfg, reported_seed: int) -> dict:
    # A run sampled from other seeds than the reported ones chose something (a sampling setting) on them: a
    # selection run, listed apart and kept out of the verdicts.
    return {**run, "family": family(vcfg), "level_steps": vcfg.sampling_steps(), "arm": arm(vcfg),
            "selection": vcfg.sampling.seed != reported_seed}


def sweep(cfg, profile: str) -> dict[str, tuple]:
    """Each run's config and, where ablation.json holds a run of the same config fingerprint, that run."""
    from pipeline.fingerprints import config_fingerprint

    recorded = {r["config_fingerprint"]: r for r in json.loads((RESULTS / "ablation.json").read_text())["runs"]
                if r["profile"] == profile}
    return {v: (c, recorded.get(config_fingerprint(c))) for v, c in ablation.sweep_configs(cfg).items()}


def gather(cfg, home: Path, profile: str, required: list[str], runs_of: dict[str, tuple],
           earlier: list[dict] = ()) -> list[dict]:
    """Every run of the sweep (`runs_of`: sweep()'s): built here, or recorded in ablation.json, or recorded by an
    earlier run of this script (`earlier`: its JSON's runs) under the same variant and config fingerprint, so a
    result outlives the artifact cache it was measured from (a new machine, a cleared NESTED_HOME)."""
    from pipeline.fingerprints import config_fingerprint
    from pipeline.plan import build_plan

    built = {r["variant"]: r for r in ablation.collect(cfg, home, profile)}
    kept = {(r["variant"], r["config_fingerprint"]): r for r in earlier
            if r.get("recorded_in") == "families.json" and r["profile"] == profile}
    runs = []
    for variant, (vcfg, old) in runs_of.items():
        if variant in built:
            run = {**built[variant], **seconds(build_plan(vcfg, home), vcfg), "recorded_in": "families.json"}
        elif old is not None:
            run = {**ablation.with_costs(old, vcfg), "variant": variant, "ablation_variant": old["variant"],
                   "recorded_in": "ablation.json"}
        elif variant in required:
            raise SystemExit(f"run '{variant}' has no evaluation yet: materialize it first")
        elif (variant, config_fingerprint(vcfg)) in kept:
            run = kept[variant, config_fingerprint(vcfg)]
        else:
            continue
        runs.append(with_family(run, vcfg, cfg.sampling.seed))
    return runs


def budgets(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by sampling cost: each group from its cheapest run up to BUDGET_SPREAD x that."""
    groups: list[list[dict]] = []
    for r in sorted(runs, key=lambda r: r["gflops_per_image"]):
        if groups and r["gflops_per_image"] <= BUDGET_SPREAD * groups[-1][0]["gflops_per_image"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def verdicts(runs: list[dict], ratio_target: float = 0.6) -> dict:
    """Per budget and against plain diffusion, run by run (one training seed over its sampling seeds); and, for
    arms with more than one training seed, pooled over all of them against plain diffusion's arm, with the
    ablation's ratio target."""
    selection = [r for r in runs if r.get("selection")]
    runs = [r for r in runs if not r.get("selection")]
    one = lambda r: ablation.pooled([r])  # noqa: E731  (a run over its sampling seeds)
    plain = next((r for r in runs if r["family"] == "plain" and not r.get("compute_matched")), None)
    out = {"budgets": []}
    if selection:
        out["selection"] = [f"{r['variant']}: {r['fid']:.2f} on sampling seeds {r['seeds']}, "
                            f"{r['gflops_per_image']:.2f} GFLOPs / image" for r in sorted(selection, key=lambda r: r["fid"])]
    for group in budgets(runs):
        ranked = sorted(group, key=lambda r: r["fid"])
        entry = {"gflops_per_image": [round(group[0]["gflops_per_image"], 2), round(group[-1]["gflops_per_image"], 2)],
                 "ranking": [f"{r['variant']} ({r['family']}) {r['fid']:.2f} +- {r['fid_std']:.2f}" for r in ranked],
                 "best": ranked[0]["variant"], "best_family": ranked[0]["family"]}
        # the runner-up is the best run of another arm: a second training seed is no rival
        rival = next((r for r in ranked if arm_of(r) != arm_of(ranked[0])), None)
        if rival is not None:
            entry["best_vs_runner_up"] = ablation.compare(one(ranked[0]), one(rival))
        out["budgets"].append(entry)
    if plain:
        out["vs_plain"] = {r["variant"]: {**ablation.compare(one(r), one(plain)), "family": r["family"],
                                          "gflops_per_image_ratio": round(r["gflops_per_image"] / plain["gflops_per_image"], 3)}
                           for r in runs if r is not plain}
        arms: dict[str, list[dict]] = {}
        for r in runs:
            arms.setdefault(arm_of(r), []).append(r)
        base = arms[arm_of(plain)]
        out["vs_plain_pooled"] = {
            rs[0]["variant"]: {**ablation.compare(ablation.pooled(rs), ablation.pooled(base), ratio_target),
                               "ratio_target": ratio_target, "training_seeds": len(rs),
                               "gflops_per_image_ratio": round(rs[0]["gflops_per_image"] / plain["gflops_per_image"], 3)}
            for rs in arms.values() if len(rs) > 1 and rs is not base} if len(base) > 1 else {}
        # plain diffusion trained with an arm's training FLOPs: that arm, all its training seeds, against it
        out["vs_compute_matched"] = {
            f"{rs[0]['variant']} vs {m['variant']}": {**ablation.compare(ablation.pooled(rs), one(m), ratio_target),
                                                      "training_seeds": len(rs), "train_gflops_ratio": round(
                                                          rs[0]["train_gflops"] / m["train_gflops"], 3)}
            for m in runs if m.get("compute_matched") for rs in arms.values()
            if rs[0]["family"] != "plain" and abs(rs[0]["train_gflops"] / m["train_gflops"] - 1) < 0.02}
    return out


def markdown(runs: list[dict]) -> str:
    plain = next((r for r in runs if r["family"] == "plain"), None)
    lines = ["| run | family | L | sampling steps (level 0 up) | FID (mean +- std, seeds) | oracle FID | FID / floor "
             "| sampling GFLOPs / image | GFLOPs / forward | train GFLOPs | train s | sampling img/s |", "|" + "---|" * 12]
    for r in sorted(runs, key=lambda r: (r.get("selection", False), r["gflops_per_image"], r["fid"])):
        rel = f" ({r['gflops_per_image'] / plain['gflops_per_image']:.2f}x)" if plain else ""
        oracle = "-" if r.get("oracle_fid") is None else f"{r['oracle_fid']:.2f} +- {r['oracle_fid_std']:.2f}"
        measured = lambda k, f: "-" if r.get(k) is None else format(r[k], f)  # noqa: E731
        name = f"{r['variant']} (selection: seed {r['seeds'][0]})" if r.get("selection") else r["variant"]
        lines.append(f"| {name} | {r['family']} | {r['L']} | {', '.join(map(str, r['level_steps']))} | "
                     f"{r['fid']:.2f} +- {measured('fid_std', '.2f')} | {oracle} | {r['fid'] / r['fid_floor']:.2f} | "
                     f"{r['gflops_per_image']:.2f}{rel} | {r['gflops_per_forward']:.3f} | {r['train_gflops']:.3g} | "
                     f"{measured('train_seconds', '.0f')} | {measured('images_per_sec', '.1f')} |")
    return "\n".join(lines)


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    runs = [r for r in runs if not r.get("selection")]
    for fam in sorted({r["family"] for r in runs}):
        rs = [r for r in runs if r["family"] == fam]
        ax.errorbar([r["gflops_per_image"] for r in rs], [r["fid"] for r in rs], yerr=[r["fid_std"] for r in rs],
                    fmt="o", capsize=3, label=fam)
        named = set()
        for r in rs:  # one label per arm: its training seeds sit on top of each other
            if arm_of(r) in named:
                continue
            named.add(arm_of(r))
            ax.annotate(r["variant"], (r["gflops_per_image"], r["fid"]), fontsize=7, xytext=(4, 2),
                        textcoords="offset points")
    ax.axhline(runs[0]["fid_floor"], ls=":", color="gray", lw=1, label="real-data floor")
    ax.set(xlabel="sampling GFLOPs per image", ylabel="FID (mean +- std over 3 sampling seeds)",
           title="Hierarchy families on 16 px emoji (CPU profile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/families_cpu.yaml")
    ap.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--variants", nargs="+", help="materialize only these runs (two processes on disjoint runs use "
                                                  "two cores; the last one to finish, or --collect-only, writes all)")
    ap.add_argument("--out", type=Path, default=RESULTS / "families.json")
    ap.add_argument("--collect-only", action="store_true", help="read the finished runs, materialize nothing")
    ap.add_argument("--from-json", action="store_true", help="read nothing: verdicts, table and plot from --out")
    args = ap.parse_args()

    from pipeline.config import load_config, nested_home

    if args.from_json:
        result = json.loads(args.out.read_text())
        runs = result["runs"]
    else:
        cfg, home = load_config(args.config), nested_home()
        began = time.perf_counter()
        runs_of = sweep(cfg, args.profile)
        todo = args.variants or [v for v, (_, old) in runs_of.items() if old is None]
        if not args.collect_only and todo:
            ablation.materialize_sweep(cfg, home, todo)
        earlier = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
        runs = gather(cfg, home, args.profile, [] if args.collect_only else todo, runs_of, earlier)
        result = {"command": f"python benchmarks/families.py --config {args.config} --profile {args.profile}",
                  "config": args.config, f"wall_seconds_{args.profile}": round(time.perf_counter() - began, 1),
                  "conventions": "As ablation.json's (FLOPs: flop_counter, 2 per multiply-add; fid: mean over the "
                                 "sampling seeds). train_seconds: every level's training as it ran (the CPU sweep ran "
                                 "two processes with one thread each); images_per_sec: sampling one seed's images. "
                                 "recorded_in: ablation.json for runs whose config fingerprint that sweep holds.",
                  "budget_spread": BUDGET_SPREAD}
    result.update({"verdicts": verdicts(runs), "runs": runs})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(markdown(runs))
    print(json.dumps(result["verdicts"], indent=1))


if __name__ == "__main__":
    main()
