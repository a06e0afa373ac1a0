"""Pipeline efficiency: each figure is a ratio of two measurements taken side by side in one run.

1. encoder features through the `encoder_features` asset vs a raw timm forward loop (images/s; target >= 0.9)
2. the latent reader training uses (pipeline.data.load_level_data) vs what a training step consumes (target >= 10x)
3. FID through the `evaluation` asset vs a direct clean-fid call on the same PNGs (seconds; target <= 1.1)
4. sampling images/s: DPM-Solver++ (the config's steps) vs DDPM (1000 steps); no target, the speed-up
5. materializing an unchanged graph (configs/tiny.yaml, all cache hits) vs its cold time (target <= 0.05)

Figures 1-4 read the built artifacts of --config under --built (never written to: whatever is rebuilt is written
into --home, a fresh temporary artifact root by default, with copies of the inputs it needs). Usage:

    .venv/bin/python benchmarks/pipeline_speed.py > pipeline_speed.log 2>&1 &
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("torch", "timm", "dagster", "clean-fid", "diffusers", "webdataset", "zarr", "numpy", "faiss-cpu")


def materialize_assets(cfg, home: Path, names: list[str], instance, checks: bool = False):
    """Materialize the named assets (all: None) as the code location defines them; returns (result, seconds)."""
    from dagster import materialize

    from assets.definitions import build_definitions

    defs = build_definitions(cfg, home)
    keep = lambda key: names is None or key.to_user_string() in names  # noqa: E731
    chosen = [a for a in defs.assets if names is None or any(keep(k) for k in a.keys)]
    chosen += [c for c in defs.asset_checks if checks and keep(c.check_key.asset_key)]
    t = time.perf_counter()
    res = materialize(chosen, instance=instance, resources=defs.resources, selection=names)
    seconds = time.perf_counter() - t
    assert res.success, f"materializing {names or 'every asset'} failed"
    return res, seconds


def copy_artifact(stage, built: Path, home: Path) -> None:
    """Copy a built artifact into the scratch home (same stage/fingerprint), never touching the original."""
    from pipeline.cache import MARKER

    src = built / stage.kind / stage.fingerprint
    assert (src / MARKER).is_file(), f"{stage.asset} is not built under {built}: materialize it first"
    shutil.copytree(src, stage.path, dirs_exist_ok=True)


def short_training(cfg, steps: int):
    """The config with every level trained for only `steps` steps (no checkpoint, one log line)."""
    from pipeline.config import apply_overrides, parse_config

    train = {"steps": steps, "checkpoint_every": steps, "log_every": steps}
    over = {"level0.train": train, **{f"levels.{i}.train": train for i in range(len(cfg.levels))}}
    return parse_config(apply_overrides(cfg.model_dump(mode="json", exclude={"variants"}), over), "short training")


def machine_load() -> dict:
    """Load average, the background ablation's state, and a matmul at 1 and 2 threads (oversubscription shows)."""
    pid = Path("/work/ablation.pid").read_text().strip() if Path("/work/ablation.pid").exists() else None
    stat = Path(f"/proc/{pid}/stat") if pid else None
    a, ms, threads = torch.randn(512, 512), {}, torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        ms[n] = round((time.perf_counter() - t) / 20 * 1e3, 2)
    torch.set_num_threads(threads)
    return {"load_average": os.getloadavg(), "matmul_512_ms_by_threads": ms,
            "ablation_state": stat.read_text().split(")")[1].split()[0] if stat and stat.exists() else "not running"}


def figure(name, a_label, a, b_label, b, unit, ratio, target, op, **extra) -> dict:
    met = None if target is None else (ratio >= target if op == ">=" else ratio <= target)
    return {"figure": name, "a": {"what": a_label, "value": a, "unit": unit}, "b": {"what": b_label, "value": b, "unit": unit},
            "ratio": round(ratio, 4), "target": None if target is None else f"{op} {target}",
            "verdict": "info" if met is None else "met" if met else "MISSED", **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/emoji.yaml", help="experiment whose built artifacts figures 1-4 use")
    ap.add_argument("--built", default=os.environ.get("NESTED_HOME") or str(ROOT / ".nested"),
                    help="artifact root holding the built experiment (read only; default $NESTED_HOME or .nested)")
    ap.add_argument("--home", help="scratch artifact root for what is rebuilt (default: a fresh temporary directory)")
    ap.add_argument("--tiny", default="configs/tiny.yaml", help="config of figure 5 (cold vs unchanged graph)")
    ap.add_argument("--train-steps", type=int, default=23, help="training steps timed per level (the first 3 are warm-up)")
    ap.add_argument("--sample-n", type=int, default=16, help="images per sampler in figure 4")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--note", action="append", default=[], help="a remark stored with the results (repeatable)")
    ap.add_argument("--out", default=str(RESULTS / "pipeline_speed.json"))
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training subprocesses of figure 5 too
    torch.set_num_threads(args.threads)
    began = time.perf_counter()

    from dagster import DagsterInstance

    from pipeline.config import load_config
    from pipeline.fingerprints import config_fingerprint
    from pipeline.plan import build_plan

    cfg, built = load_config(args.config), Path(args.built).resolve()
    home = Path(args.home or tempfile.mkdtemp(prefix="pipeline_speed-")).resolve()
    plan, built_plan = build_plan(cfg, home), build_plan(cfg, built)
    assert not plan["encoder_features"].artifact.is_complete(), f"--home {home} already has the features: use a fresh one"
    print(f"built artifacts: {built}; scratch home: {home}; torch threads {torch.get_num_threads()}", flush=True)
    figures, loads = [], {"start": machine_load()}

    # 1. Encoder features: the asset (decode, resize, forward, Zarr writes, Dagster) vs the bare timm forward.
    from pipeline.features import Preprocess, image_batches
    from pipeline.ingest import read_manifest
    from models.encoder import load_encoder

    enc = cfg.encoder
    copy_artifact(plan["images"], built, home)
    n_images = read_manifest(plan["images"].path).num_rows
    pre = Preprocess(enc)
    batches = [pre(torch.from_numpy(b)) for _, b in image_batches(plan["images"].path, enc.batch_size)]  # untimed
    model = load_encoder(enc.name, enc.weights, enc.checkpoint_format).to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=enc.dtype == "bfloat16")

    def raw_loop() -> float:
        with torch.inference_mode(), autocast:
            model.forward_features(batches[0])  # warm-up
            t = time.perf_counter()
            for x in batches:
                model.forward_features(x)
            return time.perf_counter() - t

    instance = DagsterInstance.ephemeral()
    materialize_assets(cfg, home, ["images"], instance)  # warm-up of Dagster itself (a cache hit)
    raw_before = raw_loop()  # raw, asset, raw: the asset is compared with the mean of the two raw loops around it
    _, asset_s = materialize_assets(cfg, home, ["encoder_features"], instance)
    raw_after = raw_loop()
    raw_s = (raw_before + raw_after) / 2
    del batches
    build_s = plan["encoder_features"].artifact.metadata()["seconds"]
    raw_ips, asset_ips = n_images / raw_s, n_images / asset_s
    figures.append(figure(
        "1 encoder features: asset / raw timm forward", "raw timm forward_features loop", round(raw_ips, 1),
        "encoder_features asset (Dagster materialize)", round(asset_ips, 1), "images/s", asset_ips / raw_ips, 0.9, ">=",
        images=n_images, raw_seconds=[round(raw_before, 2), round(raw_after, 2)], asset_seconds=round(asset_s, 2), asset_build_seconds=build_s,
        setup=f"{enc.name} layer {enc.layer} at {enc.input_size} px, batch {enc.batch_size}, {enc.dtype}, channels_last, "
              f"{args.threads} threads; raw: pre-decoded normalized tensors, model loaded outside the timing"))
    loads["after_1"] = machine_load()
    print(json.dumps(figures[-1]), flush=True)

    # 2. The reader training uses (all of a level's samples: its target and its conditions) vs a training step.
    from pipeline.data import iter_latents
    from pipeline.level_kinds import load_level_data
    from pipeline.train import train_level

    for level in range(1, cfg.num_levels):
        copy_artifact(plan[f"level_{level}_latents"], built, home)
    short = short_training(cfg, args.train_steps)
    short_plan = build_plan(short, home)
    for level in range(cfg.num_levels):
        load_level_data(cfg, plan, level)  # warm-up (page cache)
        t = time.perf_counter()
        data = load_level_data(cfg, plan, level)
        read_s = time.perf_counter() - t
        latents_sps = None
        if level > 0:
            t = time.perf_counter()
            count = sum(1 for _ in iter_latents(plan[f"level_{level}_latents"].path))
            latents_sps = round(count / (time.perf_counter() - t), 1)
        assert not short_plan[f"level_{level}_model"].artifact.is_complete()
        meta = train_level(short, short_plan, level)
        reader_sps, train_sps = len(data) / read_s, meta["samples_per_sec"]
        recorded = built_plan[f"level_{level}_model"].artifact.metadata().get("samples_per_sec")
        figures.append(figure(
            f"2 level {level}: reader / training consumption", "training (batch / s per step)", round(train_sps, 1),
            "load_level_data (target + conditions)", round(reader_sps, 1), "samples/s", reader_sps / train_sps, 10, ">=",
            train_measured=f"{args.train_steps - 3} timed steps of pipeline.train.train_level "
                           f"(batch {cfg.train_config(level).batch_size}, {cfg.train_config(level).precision})",
            train_sec_per_step=round(meta["sec_per_step"], 4), recorded_train_samples_per_sec=recorded,
            samples=len(data), reader_seconds=round(read_s, 3), conditions=cfg.conditions_of(level),
            iter_latents_own_shards_samples_per_sec=latents_sps))
        print(json.dumps(figures[-1]), flush=True)
    loads["after_2"] = machine_load()

    # 3. FID: the evaluation asset (features of the sample shards, FID, precision/recall, NN) vs clean-fid directly.
    from cleanfid import fid as cleanfid
    from safetensors.numpy import load_file

    from pipeline.evaluate import REFERENCE
    from pipeline.metrics import InceptionFeatures, fid_from_stats
    from pipeline.sample_shards import sample_shards

    copy_artifact(plan["samples"], built, home)
    copy_artifact(plan["reference_stats"], built, home)
    folder = home / "sample_pngs"
    folder.mkdir()
    # A deliberate copy of the shard reading: clean-fid reads a folder of PNG files, so they are written out.
    for tar in sample_shards(plan["samples"].path):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".png"):
                    (folder / m.name).write_bytes(tf.extractfile(m).read())
    ref = load_file(str(plan["reference_stats"].path / REFERENCE))
    _, eval_s = materialize_assets(cfg, home, ["evaluation"], instance)
    ev = plan["evaluation"].artifact.metadata()
    t = time.perf_counter()
    feats = cleanfid.get_folder_features(str(folder), model=InceptionFeatures("cpu"), num_workers=0, batch_size=64,
                                         device=torch.device("cpu"), mode="clean", verbose=False)
    direct_fid = fid_from_stats(np.mean(feats, axis=0), np.cov(feats, rowvar=False), ref["mu"], ref["sigma"])
    direct_s = time.perf_counter() - t
    figures.append(figure(
        "3 FID: evaluation asset / direct clean-fid", "cleanfid.fid.get_folder_features + frechet_distance",
        round(direct_s, 2), "evaluation asset (Dagster materialize)", round(eval_s, 2), "s", eval_s / direct_s, 1.1, "<=",
        images=len(feats), fid_asset=ev["fid"], fid_direct=direct_fid, fid_built=built_plan["evaluation"].artifact.metadata()["fid"],
        fid_agree=bool(abs(ev["fid"] - direct_fid) <= 1e-3 * direct_fid), asset_evaluate_samples_seconds=ev["seconds"],
        setup=f"same {len(feats)} PNGs, packaged Inception as custom feature extractor, mode clean, batch 64, num_workers 0, "
              "same reference mean/covariance; the asset also computes precision/recall and NN distances"))
    loads["after_3"] = machine_load()
    print(json.dumps(figures[-1]), flush=True)

    # 4. Sampling on the built models: DPM-Solver++ with the config's steps vs DDPM with all training timesteps.
    from pipeline.sample import sample_hierarchy, save_grid, to_uint8

    sc, n = cfg.sampling, args.sample_n
    ddpm_steps = cfg.level0.train.num_train_timesteps
    sample_hierarchy(cfg, built_plan, 2, sampling=cfg.sampling_plan(steps=2))  # warm-up
    timings, images = {}, {}
    for kind, steps in (("dpm", sc.steps), ("ddpm", ddpm_steps)):
        t = time.perf_counter()
        out = sample_hierarchy(cfg, built_plan, n, seed=sc.seed,
                               sampling=cfg.sampling_plan(steps=steps, sampler=kind, batch_size=n))
        timings[kind], images[kind] = time.perf_counter() - t, to_uint8(out[0])
    RESULTS.mkdir(parents=True, exist_ok=True)
    grid = RESULTS / "pipeline_speed_samplers.png"
    save_grid(np.concatenate([images["dpm"], images["ddpm"]]), grid, cols=n)
    dpm_ips, ddpm_ips = n / timings["dpm"], n / timings["ddpm"]
    figures.append(figure(
        "4 sampling: DPM-Solver++ / DDPM", f"DDPM {ddpm_steps} steps", round(ddpm_ips, 3),
        f"DPM-Solver++ {sc.steps} steps", round(dpm_ips, 3), "images/s", dpm_ips / ddpm_ips, None, None,
        images=n, seconds={k: round(v, 2) for k, v in timings.items()}, guidance=cfg.guidance(),
        picture=f"{grid.name}: top row DPM-Solver++, bottom row DDPM (same seed)"))
    loads["after_4"] = machine_load()
    print(json.dumps(figures[-1]), flush=True)

    # 5. The whole tiny graph (assets and their blocking checks, as the all_assets job runs) cold, then unchanged.
    tiny = load_config(args.tiny)
    tiny_home, tiny_instance = home / "tiny", DagsterInstance.ephemeral()
    _, cold_s = materialize_assets(tiny, tiny_home, None, tiny_instance, checks=True)
    warm, warm_s = materialize_assets(tiny, tiny_home, None, tiny_instance, checks=True)
    caches = [e.materialization.metadata["cache"].value for e in warm.get_asset_materialization_events()]
    figures.append(figure(
        "5 unchanged graph / cold (tiny)", "cold materialization", round(cold_s, 2), "unchanged (all cache hits)",
        round(warm_s, 2), "s", warm_s / cold_s, 0.05, "<=", assets=len(caches), all_cache_hits=all(c == "hit" for c in caches),
        setup="one process, one ephemeral instance; in-process imports were paid by figures 1-4, the cold run's "
              "training subprocesses pay their own"))
    print(json.dumps(figures[-1]), flush=True)

    loads["end"] = machine_load()
    total = time.perf_counter() - began
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "total_seconds": round(total, 1),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg(),
                    "cuda": torch.cuda.is_available()},
        "packages": {p: version(p) for p in PACKAGES},
        "configs": {c.name: {"path": p, "fingerprint": config_fingerprint(c)}
                    for c, p in ((cfg, args.config), (tiny, args.tiny))},
        "artifacts_read": {k: built_plan[k].fingerprint for k in built_plan if k != "level_neighbours"},
        "figures": figures, "machine_load": loads, "notes": args.note,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{'figure':<46} {'a':>12} {'b':>12} {'unit':<9} {'b/a':>8} {'target':>8}  verdict")
    for f in figures:
        print(f"{f['figure']:<46} {f['a']['value']:>12} {f['b']['value']:>12} {f['a']['unit']:<9} {f['ratio']:>8} "
              f"{f['target'] or '-':>8}  {f['verdict']}")
    print(f"total {total:.0f} s; results: {args.out}")
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
