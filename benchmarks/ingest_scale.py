"""Time, peak memory and bytes stored of ingest as the dataset grows (N and 8N JPEGs in class folders), with 1 and
2 worker processes, and against another checkout (`--tree`, e.g. the commit before parallel ingest). Each run is a
fresh process calling `pipeline.ingest.ingest` on a synthetic folder with resolution == source_size, the paper's
ImageNet case. Writes benchmarks/results/ingest_scale.json.

    .venv/bin/python benchmarks/ingest_scale.py [--n 2000] [--size 96] [--px 64] [--workers 1 2] [--tree DIR]

Memory: the ingesting process's peak RSS above its size after the imports (VmHWM, reset through clear_refs), and
each worker's peak private memory (USS: Private_Clean + Private_Dirty of smaps_rollup, sampled every 0.5 s; a
forked worker shares the parent's pages until it writes them, so its RSS would count the parent's torch again).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

MEASURE = r"""
import inspect, json, os, resource, sys, threading, time
from pathlib import Path
from pipeline.ingest import ingest
from pipeline.schema import DatasetConfig

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

def children():
    me, found = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) == me:
                found.append(pid)
        except (OSError, IndexError, ValueError):
            pass
    return found

def uss_kb(pid):
    try:
        rows = [l.split() for l in open(f"/proc/{pid}/smaps_rollup")]
    except OSError:
        return 0
    return sum(int(r[1]) for r in rows if r[0] in ("Private_Clean:", "Private_Dirty:"))

peak_uss, done, sampler_cpu = {}, threading.Event(), []
def sample():
    while not done.wait(0.5):
        for pid in children():
            peak_uss[pid] = max(peak_uss.get(pid, 0), uss_kb(pid))
    sampler_cpu.append(time.thread_time())  # this thread's own CPU time, not the ingest's

cfg = DatasetConfig(source="folder", path=sys.argv[1], resolution=int(sys.argv[3]), source_size=int(sys.argv[3]),
                    shard_size=1000)
kwargs = {"workers": int(sys.argv[4])} if "workers" in inspect.signature(ingest).parameters else {}
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
watch = threading.Thread(target=sample, daemon=True)
watch.start()
cpu = lambda who: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(who))
t, c_self, c_workers = time.perf_counter(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
meta = ingest(cfg, Path(sys.argv[2]), log=lambda _: None, **kwargs)
seconds = time.perf_counter() - t
done.set()
watch.join()
parent_cpu = cpu(resource.RUSAGE_SELF) - c_self - sampler_cpu[0]
worker_cpu = cpu(resource.RUSAGE_CHILDREN) - c_workers  # the workers are joined: their CPU time is counted
print(json.dumps({"seconds": seconds, "cpu_seconds": parent_cpu + worker_cpu, "parent_cpu_seconds": parent_cpu,
                  "images": meta["num_images"], "peak_rss_mib": (status("VmHWM") - base) / 1024,
                  "base_rss_mib": base / 1024, "worker_peak_uss_mib": max(peak_uss.values(), default=0) / 1024,
                  "workers_seen": len(peak_uss)}))
"""


def make_folder(root: Path, n: int, size: int, classes: int = 100) -> Path:
    """n JPEGs of size x size (smooth random fields with grain, like small photos) in `classes` class folders."""
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(n)
    for c in range(classes):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        grain = rng.integers(-12, 13, (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + grain, 0, 255).astype(np.uint8))
        img.save(root / f"class_{i % classes:03d}" / f"{i:07d}.jpg", quality=90)
    (root / "done").write_text("")
    return root


def tree_digest(out: Path) -> tuple[int, str]:
    """Bytes stored, and one hash over every file (relative path and content)."""
    h, total = hashlib.sha256(), 0
    for p in sorted(q for q in out.rglob("*") if q.is_file()):
        data = p.read_bytes()
        total += len(data)
        h.update(p.relative_to(out).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    return total, h.hexdigest()


def measure(tree: Path, folder: Path, out: Path, px: int, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(out), str(px), str(workers)], env=env,
                         cwd=tree, capture_output=True, text=True, check=True)
    row = json.loads(run.stdout.strip().splitlines()[-1])
    row["bytes"], row["digest"] = tree_digest(out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="N: runs at N and 8N")
    ap.add_argument("--size", type=int, default=96, help="the JPEGs' size in pixels")
    ap.add_argument("--px", type=int, default=64, help="resolution = source_size of the ingest")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tree", type=Path, help="another checkout, measured with one process beside this one")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ingest_scale")
    args = ap.parse_args()

    runs = [("this", ROOT, w) for w in args.workers] + ([("tree", args.tree.resolve(), 1)] if args.tree else [])
    rows = []
    for n in (args.n, 8 * args.n):
        folder = make_folder(args.work / f"jpegs_{n}_{args.size}", n, args.size)
        for name, tree, workers in runs:
            out = Path(tempfile.mkdtemp(dir=args.work))
            row = {"code": name, "n": n, "workers": workers, **measure(tree, folder, out, args.px, workers)}
            subprocess.run(["rm", "-rf", str(out)], check=True)
            rows.append(row)
            print(f"{name:5s} N={n:6d} workers={workers}: {row['seconds']:7.1f} s "
                  f"({row['images'] / row['seconds']:6.0f} img/s, {row['cpu_seconds']:6.1f} CPU s, {row['parent_cpu_seconds']:5.1f} of them the writer's), peak RSS +{row['peak_rss_mib']:6.1f} MiB "
                  f"(base {row['base_rss_mib']:.0f}), worker USS {row['worker_peak_uss_mib']:5.1f} MiB, "
                  f"{row['bytes'] / 1e6:7.2f} MB stored, digest {row['digest'][:12]}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest_scale.json").write_text(json.dumps(
        {"machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
         "jpeg_px": args.size, "px": args.px, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
