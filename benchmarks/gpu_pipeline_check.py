"""The pipeline's own training and sampling on a GPU, measured: a config's levels trained for a few hundred steps by
pipeline.train (eager, then under torch.compile), then sampled top-down by pipeline.sample.

    # where the dataset is: the upstream artifacts (images, features, SVD, latents) and a run file, in one folder
    .venv/bin/python benchmarks/gpu_pipeline_check.py prepare --home .gpu_check --steps 400
    # on the GPU machine; it needs torch, timm, diffusers, webdataset, zarr and pydantic, not Dagster or the dataset:
    python benchmarks/gpu_pipeline_check.py run --home .gpu_check --out gpu_pipeline.json

What it reports per level and mode: the training step time that pipeline.train measures itself (after its
warm-up steps), the wall time including torch.compile's, and the first and last logged losses; then sampling's
images per second and the generated latents' per-channel statistics against the data's (mean 0, std 1).
The steps are the config's scaled down: this is a check that the GPU path works and what it costs, not a result.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any directory

UPSTREAM = ("images", "features", "svd", "latents")


def short_config(config: str, steps: int):
    """The config with every level trained `steps` steps (no checkpoints within so short a run)."""
    from pipeline.config import load_config, parse_config

    data = load_config(config, check_files=False).model_dump(mode="json", exclude={"variants"})
    for train in [data["level0"]["train"]] + [lv["train"] for lv in data["levels"]]:
        train.update(steps=steps, checkpoint_every=max(steps, train["checkpoint_every"]),
                     log_every=min(train["log_every"], max(1, steps // 4)))
    return parse_config(data)


def prepare(args) -> None:
    from pipeline.plan import build_plan
    from pipeline.stages import materialize
    from pipeline.run_file import write_run_file

    cfg = short_config(args.config, args.steps)
    home = args.home.resolve()
    plan = build_plan(cfg, home)
    for name, stage in plan.items():
        if stage.kind in UPSTREAM:
            materialize(cfg, plan, name)
    run_file = write_run_file(cfg, plan, home)
    shutil.copy(run_file, home / "gpu_check_run.json")
    print(f"prepared {home}: {', '.join(n for n, s in plan.items() if s.kind in UPSTREAM)}; run file "
          f"{home / 'gpu_check_run.json'}")


def load_run(home: Path):
    """The run file's config and plan, its artifacts re-rooted at `home` (it was written on another machine)."""
    from pipeline.config import config_from_json
    from pipeline.run_file import plan_from_json

    run = json.loads((home / "gpu_check_run.json").read_text())
    for stage in run["plan"].values():
        stage["home"] = str(home)
    return config_from_json(json.dumps(run["config"])), plan_from_json(run["plan"])


def run(args) -> dict:
    import torch

    from pipeline.sample import sample_hierarchy
    from pipeline.train import train_level

    if not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device: this check is for a GPU")
    source = args.home.resolve()
    cfg, _ = load_run(source)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": cfg.name,
              "steps": cfg.level0.train.steps, "training": {}, "sampling": {}}
    for mode in ("eager", "compiled"):
        home = Path(args.work) / mode
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(source, home)
        cfg, plan = load_run(home)
        cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"compile": mode == "compiled"})})
        for level in reversed(range(cfg.num_levels)):
            began = time.perf_counter()
            meta = train_level(cfg, plan, level)
            curve = meta["loss_curve"]
            result["training"][f"{mode}/level_{level}"] = {
                "sec_per_step": meta["sec_per_step"], "samples_per_sec": meta["samples_per_sec"],
                "wall_seconds": round(time.perf_counter() - began, 1), "compiled": meta["compiled"],
                "precision": meta["precision"], "batch_size": cfg.train_config(level).batch_size,
                "params": meta["params"], "first_loss": curve[0][1], "last_loss": curve[-1][1]}
            print(mode, level, result["training"][f"{mode}/level_{level}"], flush=True)
    sc = cfg.sampling  # the compiled run's models, sampled as the samples stage samples
    torch.cuda.synchronize()
    began = time.perf_counter()
    gen = sample_hierarchy(cfg, plan, sc.num_samples, sc.seed, cfg.sampling_plan())
    seconds = time.perf_counter() - began
    result["sampling"] = {"num_samples": sc.num_samples, "seconds": round(seconds, 2),
                          "images_per_sec": round(sc.num_samples / seconds, 1), "steps": cfg.sampling_steps(),
                          "guidance": cfg.guidance(),
                          "levels": {str(k): {"shape": list(z.shape[1:]), "mean": z.mean().item(),
                                              "channel_std_mean": z.transpose(0, 1).flatten(1).std(1).mean().item(),
                                              "min": z.min().item(), "max": z.max().item(),
                                              "finite": bool(torch.isfinite(z).all())} for k, z in gen.items()}}
    print(json.dumps(result["sampling"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="build the upstream artifacts and the run file (no GPU needed)")
    p.add_argument("--config", default="configs/ablation_gpu.yaml")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--home", type=Path, default=Path(".gpu_check"))
    r = sub.add_parser("run", help="train every level eager and compiled, then sample (a CUDA GPU)")
    r.add_argument("--home", type=Path, default=Path(".gpu_check"))
    r.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"), help="where each mode's copy trains")
    r.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.command == "prepare":
        if args.steps < 10:
            ap.error("--steps must be >= 10 (the trainer times steps after its first three)")
        prepare(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
