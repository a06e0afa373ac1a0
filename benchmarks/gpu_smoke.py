"""The Python half of benchmarks/gpu_smoke.sh: `prepare` writes the smoke's configs and their synthetic data, `check`
reads every heavy stage's metadata after the graph ran and fails unless each one says it ran on the expected device.

    python benchmarks/gpu_smoke.py prepare --device cuda --work DIR      # DIR/pixels.yaml, DIR/vae.yaml, data, VAE
    python benchmarks/gpu_smoke.py check --expect cuda --home HOME DIR/pixels.yaml DIR/vae.yaml [--out JSON]

The GPU configs are configs/emoji_gpu.yaml's models (U-ViT-S at every level, batch 256, bf16) on a synthetic
class-folder set of 4,000 images at emoji's sizes (no download), each level trained `--steps` steps; the CPU dry
run's are configs/tiny.yaml's on 120 synthetic images, with the FID reference and the samples capped. Each has a
VAE twin: level 0 in an untrained AutoencoderKL's latent space (benchmarks/scale.py's), which adds the
`level_0_latents` stage and VAE decoding to the graph.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs as a script from any directory
sys.path.insert(0, str(ROOT / "benchmarks"))

# The stages that compute on compute.device and must say so; the others are light CPU work (ingest, the SVD, the
# semantic latents' projections, and the neighbours' faiss search of a few queries against small blocks, which
# stays on the CPU). A kind added later is checked unless it is named here.
LIGHT_KINDS = ("images", "svd", "latents", "neighbours")


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in: a mapping merges into a mapping, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def smoke_configs(device: str, work: Path, steps: int) -> dict[str, dict]:
    """The smoke's configs by name (pixels, vae) for `device` (cuda: GPU-sized; cpu: the dry run's tiny ones)."""
    from pipeline.config import unshared
    from scale import make_dataset, make_vae

    gpu = device == "cuda"
    base = unshared(yaml.safe_load((ROOT / "configs" / ("emoji_gpu.yaml" if gpu else "tiny.yaml")).read_text()))
    n, res, source = (4000, 32, 64) if gpu else (120, 16, 32)
    data = make_dataset(work / "data", n, source)
    train = {"steps": steps, "warmup_steps": max(1, steps // 10), "checkpoint_every": steps,
             "log_every": max(1, steps // 4)}
    changes = {
        "name": f"gpu_smoke_{device}",
        "dataset": {"source": "folder", "path": str(data), "resolution": res, "source_size": source,
                    "holdout_fraction": 0.1 if gpu else 0.05, "shard_size": 1000 if gpu else 50, "max_images": None,
                    "drop_categories": []},
        "levels": [merged(level, {"train": train}) for level in base["levels"]],
        "level0": merged(base["level0"], {"train": train}),
        # torch.compile costs a minute per level: out of an 8-minute budget (gpu_pipeline_check.py times it)
        "compute": {"device": device, "compile": False},
        # On the CPU, Inception (about 0.5 s an image on one core) is most of the graph's time: the fewest images
        # the evaluation takes (k + 1 = 4 samples and references), no oracle.
        "sampling": merged(base.get("sampling", {}), {"num_samples": 500, "eval_seeds": 1} if gpu else
                           {"num_samples": 4, "batch_size": 4, "reference_images": 4, "shared_rows": 1,
                            "oracle": False}),
        "variations": {} if gpu else {"num_images": 2, "seeds": 1},
    }
    pixels = merged(base, changes)
    vae = merged(pixels, {"name": f"gpu_smoke_{device}_vae",
                          "level0": {"space": "vae", "vae": str(make_vae(work / "vae"))}})
    return {"pixels": pixels, "vae": vae}


def stage_rows(plan: dict, expect: str, config: str, seen: set[str]) -> tuple[list[dict], list[str]]:
    """One row per stage of `plan` not in `seen` (fingerprints already listed), and what fails: a heavy stage not
    built, without a `device` in its metadata, or on another device than `expect`."""
    rows, failures = [], []
    for name, stage in plan.items():
        if stage.fingerprint in seen:
            continue
        seen.add(stage.fingerprint)
        heavy = stage.kind not in LIGHT_KINDS or name == "level_0_latents"
        row = {"config": config, "stage": name, "heavy": heavy, "device": None, "precision": None, "seconds": None}
        rows.append(row)
        if not stage.artifact.is_complete():
            row["verdict"] = "NOT BUILT"
            failures.append(f"{config}: {name} was not built")
            continue
        meta = stage.artifact.metadata()
        # the evaluation's `precision` is the metric; its Inception's is `inception_precision`
        precision = meta.get("inception_precision", meta.get("precision"))
        row.update(device=meta.get("device"), precision=precision if isinstance(precision, str) else None,
                   seconds=meta.get("seconds"))
        if not heavy:
            row["verdict"] = "-"
        elif "device" not in meta:
            row["verdict"] = "NO DEVICE"
            failures.append(f"{config}: {name} ({stage.kind}) records no `device` in its metadata")
        elif str(meta["device"]).split(":")[0] != expect:
            row["verdict"] = "WRONG DEVICE"
            failures.append(f"{config}: {name} ran on {meta['device']}, not {expect}")
        else:
            row["verdict"] = "ok"
    return rows, failures


def print_table(rows: list[dict]) -> None:
    print(f"{'config':<8} {'stage':<18} {'device':<8} {'precision':<10} {'seconds':>8}  verdict")
    for r in rows:
        print(f"{r['config']:<8} {r['stage']:<18} {r['device'] or '-':<8} {r['precision'] or '-':<10} "
              f"{r['seconds'] if r['seconds'] is not None else '-':>8}  {r['verdict']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the smoke's configs (and their data and VAE) into --work")
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, help="training steps per level (default: 100 on cuda, 10 on cpu)")
    c = sub.add_parser("check", help="every heavy stage's metadata says --expect; a table of them")
    c.add_argument("configs", nargs="+", type=Path)
    c.add_argument("--expect", choices=("cuda", "cpu"), required=True)
    c.add_argument("--home", type=Path, required=True)
    c.add_argument("--out", type=Path, help="the table and the verdict as JSON")
    c.add_argument("--timing", action="append", default=[], help="NAME=SECONDS recorded with the result")
    args = ap.parse_args(argv)

    if args.command == "prepare":
        args.work.mkdir(parents=True, exist_ok=True)
        steps = args.steps or (100 if args.device == "cuda" else 10)
        for name, data in smoke_configs(args.device, args.work.resolve(), steps).items():
            (args.work / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            print(args.work / f"{name}.yaml")
        return 0

    import torch

    from pipeline.config import load_config
    from pipeline.plan import build_plan

    rows, failures, seen = [], [], set()
    for path in args.configs:
        got_rows, got_failures = stage_rows(build_plan(load_config(path), args.home), args.expect, path.stem, seen)
        rows += got_rows
        failures += got_failures
    print_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "expect": args.expect, "passed": not failures, "failures": failures,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__,
            "timings_s": {k: float(v) for k, v in (t.split("=", 1) for t in args.timing)},
            "configs": [str(p) for p in args.configs], "stages": rows}, indent=1) + "\n")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"{len(rows)} stages, {sum(r['heavy'] for r in rows)} heavy: "
          + ("every heavy stage ran on " + args.expect if not failures else f"{len(failures)} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
