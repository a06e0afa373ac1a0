"""Why the nested runs of the level ablation gain what they gain: three measurements on the finished sweep.

1. **FID noise at N.** The baseline (and the best nested run) sampled again with other seeds: a gap between
   two runs smaller than this spread is not a result.
2. **Oracle conditions.** Level 0 of each nested run sampled from the held-out images' *real* coarser latents
   (with sigma noise, as in training) instead of generated ones. The gap between this FID and the run's own
   FID is what imperfect latent models cost; the gap to the baseline is what the conditioning can buy at most.
3. **Guidance at level 0.** Each nested run sampled again with other level-0 guidance weights: at 0 the
   unconditional pass, most of the sampling cost above the baseline, is saved; larger weights lean harder on
   the coarse latents.
4. **The oracle ladder.** Level 0 sampled with the real latents of only the levels >= k, k from the coarsest
   down, the rest generated: where the gap between the full oracle and the run's own FID comes from, level by
   level (k = 1 is the full oracle; none given is the run itself).
5. **Latent quality.** Frechet distance of each generated latent level to the training latents, next to the
   held-out latents' distance (the floor at the same N), the k-NN precision and recall in latent space (FD
   matches two moments only), and the generated latents' channel std (data: 1). A level with conditions is also
   sampled from the held-out images' real coarser latents (the latent-space rung of the ladder): what the level
   costs by itself, apart from the errors of the levels above it.

Parts 1 and 2 are now columns of every evaluation row (`sampling.eval_seeds`, `sampling.oracle`, through the same
helpers of pipeline/evaluate.py); parts 3 to 5 are this script's. Reads the cached models of the sweep and trains nothing, unless ``--precision`` asks for the runs in another
precision (bfloat16 autocast is emulated, ~14x slower than float32, on CPUs without AVX512-BF16 or AMX); then
the base and the ``--variants`` named are materialized first. Writes ``benchmarks/results/ablation_diagnostics.json``:

    .venv/bin/python benchmarks/ablation_diagnostics.py --config configs/ablation_cpu.yaml --profile cpu \
        --precision float32 --variants L1
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sample_fid(cfg, plan, reference: dict, seed: int, given: dict | None = None) -> dict:
    """Sample N images top-down (or from `given` coarse latents) and score them as the evaluation asset does."""
    from pipeline.evaluate import sampled_features
    from pipeline.metrics import InceptionFeatures, fid_from_features, precision_recall

    feats = sampled_features(cfg, plan, seed, InceptionFeatures(path=cfg.sampling.inception_weights), given)
    pr = precision_recall(reference["train"], feats, k=3)
    return {"fid": fid_from_features(feats, reference["train"]), **pr, "num_samples": len(feats)}


def channel_std_mean(z: np.ndarray) -> float:
    """The mean over channels of each channel's std (over samples and positions; the data's: 1)."""
    from pipeline.stats import ChannelStats

    stats = ChannelStats()
    stats.update(torch.from_numpy(z))
    return stats.summary()["std_mean"]


def latent_fd(generated: np.ndarray, train: np.ndarray) -> float:
    from pipeline.metrics import fid_from_features

    return fid_from_features(generated.reshape(len(generated), -1).astype(np.float64),
                             train.reshape(len(train), -1).astype(np.float64))


def latent_pr(train: np.ndarray, z: np.ndarray, name: str) -> dict:
    """k-NN precision and recall of latents `z` against the training latents, flattened (k = 3, as for images)."""
    from pipeline.metrics import precision_recall

    pr = precision_recall(train.reshape(len(train), -1), z.reshape(len(z), -1), k=3)
    return {f"precision_{name}": pr["precision"], f"recall_{name}": pr["recall"]}


def level_given_real(cfg, plan, level: int, real: dict) -> np.ndarray:
    """Level `level` sampled from the held-out images' real coarser latents (with their sigma noise, as in training),
    at the run's steps and guidance, sampling seed 0."""
    from pipeline.model_io import load_level_model
    from pipeline.runtime import sampling_device
    from pipeline.sample import noisy_conditions, sample_level

    model, spec = load_level_model(plan[f"level_{level}_model"].artifact.require(), True, sampling_device())
    g = torch.Generator().manual_seed(0)
    conds = noisy_conditions(cfg, level, real, g)
    n = len(conds[0])
    return sample_level(model, spec, conds, n, cfg.sampling_steps()[level], cfg.guidance()[level], g,
                        cfg.sampling.sampler).numpy()


def with_precision(path: str, precision: str, keep: list[str] | None):
    """The sweep config with every level trained in `precision`, keeping only the variants in `keep`."""
    import yaml

    from pipeline.config import parse_config

    data = yaml.safe_load(Path(path).read_text())

    def visit(node):
        if isinstance(node, dict):
            if "precision" in node:
                node["precision"] = precision
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(data)
    if keep is not None:
        data["variants"] = {k: v for k, v in data.get("variants", {}).items() if k in keep}
    data["name"] = f"{data['name']}_{precision}"
    return parse_config(data, source=f"{path} ({precision})")


PARTS = ("seeds", "oracle", "guidance", "ladder", "latents")


def merged(earlier: dict | None, out: dict) -> dict:
    """This invocation's measurements added to the earlier ones of the same precision: runs not diagnosed now
    are kept, a run diagnosed again keeps the parts not measured now, and the commands are listed in order
    (the wall time is the latest invocation's)."""
    if not earlier or earlier.get("precision") != out["precision"]:
        return out
    runs = {**earlier["runs"], **{n: {**earlier["runs"].get(n, {}), **r} for n, r in out["runs"].items()}}
    commands = [earlier["command"]] if isinstance(earlier["command"], str) else earlier["command"]
    return {**out, "runs": runs, "command": [*commands, out["command"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ablation_cpu.yaml")
    ap.add_argument("--profile", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="extra sampling seeds (the sweep used 0)")
    ap.add_argument("--level0-guidance", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                    help="level-0 guidance weights to sample the nested runs with")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), help="retrain the runs in this precision first")
    ap.add_argument("--variants", nargs="*", help="the variants to diagnose beside the base (default: all)")
    args = ap.parse_args()

    from safetensors.numpy import load_file

    from pipeline.config import load_config, nested_home, variant_configs
    from pipeline.costs import cost_table
    from pipeline.evaluate import REFERENCE, oracle_ladder
    from pipeline.levels import read_latents
    from pipeline.plan import build_plan
    from pipeline.sample_shards import sample_latents

    began = time.perf_counter()
    home = nested_home()
    if args.precision:
        from ablation import materialize_sweep  # benchmarks/ablation.py, beside this script

        cfg = with_precision(args.config, args.precision, args.variants)
        materialize_sweep(cfg, home)
    else:
        cfg = load_config(args.config)
    # The ablation's base always (the others are measured against it); another config's runs only when named
    keep_base = Path(args.config).name.startswith("ablation")
    runs = {k: c for k, c in {"base": cfg, **variant_configs(cfg, check_files=False)}.items()
            if args.variants is None or k in args.variants or (k == "base" and keep_base)}
    plans = {name: build_plan(c, home) for name, c in runs.items()}
    first = next(iter(plans.values()))  # every run shares the data, so the reference
    reference = load_file(str(first["reference_stats"].artifact.require() / REFERENCE))
    command = f"python benchmarks/ablation_diagnostics.py --config {args.config} --profile {args.profile}"
    if args.precision:
        command += f" --precision {args.precision}"
    if args.variants is not None:
        command += " --variants " + " ".join(args.variants)
    command += " --parts " + " ".join(args.parts)
    out = {"command": command, "profile": args.profile, "precision": args.precision or "as configured",
           "fid_floor": first["reference_stats"].artifact.metadata()["fid_floor"], "runs": {}}
    unconditional = {name: c for name, c in runs.items() if not c.class_conditional}
    best = min((n for n, c in unconditional.items() if c.num_levels > 1),
               key=lambda n: plans[n]["evaluation"].artifact.metadata()["row"]["fid"]) if "seeds" in args.parts else None
    for name, c in unconditional.items():
        plan = plans[name]
        row = plan["evaluation"].artifact.metadata()["row"]
        rec = {"L": c.num_levels, "sigmas": [lv.sigma for lv in c.levels], "guidance": c.guidance(),
               # the run's own FID, at its own sampling seed (0 in the ablation's sweep, 100 in the families')
               "fid_run_seed": row["fid"], "run_sampling_seed": c.sampling.seed,
               "precision": row["precision"], "recall": row["recall"],
               "gflops_per_image": cost_table(c)["sampling_gflops_per_image"],
               "config_fingerprint": row["config_fingerprint"]}
        if "seeds" in args.parts and (c.num_levels == 1 or name == best):
            rec["fid_other_seeds"] = {str(s): sample_fid(c, plan, reference, s)["fid"] for s in args.seeds}
            fids = [row["fid"], *rec["fid_other_seeds"].values()]
            rec["fid_mean"], rec["fid_std"] = float(np.mean(fids)), float(np.std(fids, ddof=1))
        if c.num_levels > 1:  # the held-out images' latents: oracle conditions, and the latents' FD floor
            real = {level: torch.from_numpy(read_latents(plan[f"level_{level}_latents"].artifact.require(), "holdout")[1])
                    for level in range(1, c.num_levels)}
        if c.num_levels > 1 and "oracle" in args.parts:
            oracle = sample_fid(c, plan, reference, 0, given=real)
            rec["oracle"] = {"fid": oracle["fid"], "precision": oracle["precision"], "recall": oracle["recall"],
                             "num_samples": oracle["num_samples"]}
        if c.num_levels > 2 and "ladder" in args.parts:
            rec["oracle_ladder"] = {}
            for k, given in oracle_ladder(real).items():  # real levels k..L-1, generated below them
                rec["oracle_ladder"][f"real_from_{k}"] = {
                    kk: v for kk, v in sample_fid(c, plan, reference, 0, given=given).items()
                    if kk in ("fid", "precision", "recall")}
                print(name, f"real latents from level {k}:", rec["oracle_ladder"][f"real_from_{k}"], flush=True)
        if c.num_levels > 1 and "guidance" in args.parts:
            rec["level0_guidance"] = {}
            for w in args.level0_guidance:
                cw = c.model_copy(update={"sampling": c.sampling.model_copy(update={"guidance": [w, *c.guidance()[1:]]})})
                rec["level0_guidance"][str(w)] = {
                    "gflops_per_image": cost_table(cw)["sampling_gflops_per_image"],
                    **{k: v for k, v in sample_fid(cw, plan, reference, 0).items() if k in ("fid", "precision", "recall")}}
        if c.num_levels > 1 and "latents" in args.parts:
            generated = sample_latents(plan["samples"].artifact.require(), range(1, c.num_levels))
            rec["latents"] = {}
            for level in range(1, c.num_levels):
                _, train, _ = read_latents(plan[f"level_{level}_latents"].artifact.require(), "train")
                gen, held = generated[level], real[level].numpy()
                rec["latents"][str(level)] = {
                    "fd_generated": latent_fd(gen, train), "fd_holdout_floor": latent_fd(held, train),
                    **latent_pr(train, gen, "generated"), **latent_pr(train, held, "holdout_floor"),
                    "generated_channel_std": channel_std_mean(gen),
                    "dims": int(np.prod(gen.shape[1:]))}
                if c.conditions_of(level):
                    given = level_given_real(c, plan, level, real)
                    rec["latents"][str(level)].update(
                        {"fd_given_real": latent_fd(given, train), **latent_pr(train, given, "given_real")})
        out["runs"][name] = rec
        print(name, json.dumps(rec), flush=True)
    out["wall_seconds_with_training"] = round(time.perf_counter() - began, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "ablation_diagnostics.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    # the ablation's runs under the profile's name; another config's (configs/families_cpu.yaml) beside them
    key = args.profile if Path(args.config).name.startswith("ablation") else f"{args.profile}:{cfg.name}"
    old[key] = merged(old.get(key), out)
    path.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
