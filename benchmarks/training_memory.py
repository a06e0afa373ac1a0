"""Peak memory and speed of training as the training set grows (N and 8N images), in memory against streamed
(pipeline/loader.py), each measured in a fresh process: `pipeline.train.train` of level 0 (16 px pixels from the
mixed image shards, conditioned on a cascade level: no encoder) for a few steps, on artifacts built beforehand from
synthetic images. Writes benchmarks/results/training_memory.json.

    .venv/bin/python benchmarks/training_memory.py [--n 4000] [--steps 20] [--workers 2]
    .venv/bin/python benchmarks/training_memory.py --table     # RESULTS.md's table from the stored JSON

The training process's peak is its VmHWM above its VmRSS before `train` (reset through clear_refs); a streamed run's
DataLoader workers are processes of their own, so their peaks (VmHWM, shared pages included: an upper bound) are
polled and reported beside it. `loader: memory` is the path every run took before the loader existed (the same
batches, bit for bit).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

MEASURE = r"""
import json, sys, tempfile, threading, time
from pathlib import Path
from pipeline.config import parse_config
from pipeline.plan import build_plan
from pipeline.train import train

def status(field, pid="self"):  # kB, from the kernel's account of a process
    try:
        return next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith(field + ":"))
    except (OSError, StopIteration):
        return 0

workers, done = {}, threading.Event()

def poll_workers():  # the DataLoader's worker processes: each one's peak while it lives
    import os
    while not done.is_set():
        for task in os.listdir("/proc/self/task"):
            for pid in open(f"/proc/self/task/{task}/children").read().split():
                workers[pid] = max(workers.get(pid, 0), status("VmHWM", pid))
        time.sleep(0.05)

cfg = parse_config(json.loads(sys.argv[1]))
plan = build_plan(cfg, Path(sys.argv[2]))
for name in ("images", "level_1_latents"):
    plan[name].artifact.require()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
threading.Thread(target=poll_workers, daemon=True).start()
t = time.perf_counter()
meta = train(cfg, plan, Path(tempfile.mkdtemp()), level=0, log=lambda _: None)
seconds = time.perf_counter() - t
done.set()
print(json.dumps({"peak_rss_mib": (status("VmHWM") - base) / 1024, "process_peak_mib": status("VmHWM") / 1024,
                  "worker_peaks_mib": sorted(round(v / 1024, 1) for v in workers.values() if v),
                  "seconds": seconds, "sec_per_step": meta["sec_per_step"], "loader": meta["loader"],
                  "final_loss": meta["final_loss"]}))
"""


def config(npz: Path, n: int, loader: str, workers: int, steps: int) -> dict:
    return {"name": f"training_memory_{n}",
            "dataset": {"source": "npz", "path": str(npz), "resolution": 16, "source_size": 16, "shard_size": 1000,
                        "holdout_fraction": 0.05},
            "levels": [{"kind": "cascade", "pool": 4, "channels": 3, "sigma": 0.5}],
            "level0": {"train": {"backbone": "unet", "size": "tiny", "steps": steps, "batch_size": 32,
                                 "log_every": steps, "checkpoint_every": steps, "warmup_steps": 1}},
            "sampling": {"guidance": [0.0, 0.0]},
            "compute": {"loader": loader, "loader_workers": workers}}


def prepare(n: int, work: Path) -> tuple[Path, Path, int]:
    """Synthetic 16 px images (smooth random fields, 10 labels) and level 0's inputs, built once per N."""
    from pipeline.config import parse_config
    from pipeline.plan import build_plan
    from pipeline.stages import materialize

    rng = np.random.default_rng(n)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    npz = work / f"images_{n}.npz"
    np.savez(npz, images=np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2), labels=rng.integers(0, 10, size=n))
    home = work / f"home_{n}"
    cfg = parse_config(config(npz, n, "memory", 0, 1))
    plan = build_plan(cfg, home)
    for name in ("images", "level_1_latents"):
        materialize(cfg, plan, name, log=lambda _: None)
    return npz, home, plan["images"].artifact.metadata()["num_train"]


def measure(data: dict, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(data), str(home)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounded(got: dict) -> dict:
    return {k: round(v, 3 if k in ("sec_per_step", "final_loss") else 1) if isinstance(v, float) else v
            for k, v in got.items()}


def table(result: dict) -> str:
    """RESULTS.md's table, from the JSON: each loader's peak RSS at N and 8N, and their ratio."""
    lines = ["| loader | N train images | peak RSS MiB | 8N train images | peak RSS MiB | RSS 8N / N | "
             "workers' peaks MiB (8N) | s/step N, 8N | seconds N, 8N (loading included) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["run"] for r in result["runs"]):
        a, b = sorted((r for r in result["runs"] if r["run"] == name), key=lambda r: r["n"])
        lines.append(f"| {name} | {a['train_images']} | {a['peak_rss_mib']} | {b['train_images']} | "
                     f"{b['peak_rss_mib']} | {b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x | "
                     f"{', '.join(map(str, b['worker_peaks_mib'])) or '-'} | "
                     f"{a['sec_per_step']:.2f}, {b['sec_per_step']:.2f} | {a['seconds']:.0f}, {b['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print RESULTS.md's table of the stored results and stop")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="the streamed run's loader_workers (0 is measured too)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS / "training_memory.json").read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="training_memory_"))
    runs = []
    for n in (args.n, 8 * args.n):
        npz, home, train_images = prepare(n, work)
        for loader, workers in (("memory", 0), ("stream", 0), ("stream", args.workers)):
            got = measure(config(npz, n, loader, workers, args.steps), home)
            name = loader if loader == "memory" else f"stream, {workers} workers"
            runs.append({"run": name, "n": n, "train_images": train_images, **rounded(got)})
            print(json.dumps(runs[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training_memory.json").write_text(json.dumps({
        "command": "python benchmarks/training_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "images": "synthetic 16 px, 4x4 blocks",
        "peak_rss": "VmHWM of a fresh training process during train() (reset through clear_refs), above its VmRSS "
                    "before it; workers' peaks: each DataLoader worker's VmHWM (shared pages included)",
        "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
