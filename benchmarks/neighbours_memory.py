"""Peak memory and time of the `level_neighbours` stage as the training set grows (N and 8N images), measured in a
fresh process per run: the stage's build function alone, on artifacts built beforehand (images and one cascade
level: no encoder), synthetic 32 px images. Writes benchmarks/results/neighbours_memory.json.

    .venv/bin/python benchmarks/neighbours_memory.py [--n 4000] [--tree DIR ...]
    .venv/bin/python benchmarks/neighbours_memory.py --table     # RESULTS.md's table from the stored JSON

`--tree` measures another checkout (e.g. a worktree of an older commit) with the same artifacts: its pipeline/
is put first on the import path of the measuring process.
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
import json, sys, tempfile, time
from pathlib import Path
from pipeline.config import parse_config
from pipeline.plan import build_plan
from pipeline.stages import build

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

cfg = parse_config(json.loads(sys.argv[1]))
plan = build_plan(cfg, Path(sys.argv[2]))
for name in ("images", "level_1_latents"):
    plan[name].artifact.require()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
t = time.perf_counter()
build(cfg, plan, "level_neighbours", Path(tempfile.mkdtemp()), log=lambda _: None)
seconds = time.perf_counter() - t
print(json.dumps({"peak_rss_mib": (status("VmHWM") - base) / 1024, "seconds": seconds}))
"""

def config(npz: Path, n: int) -> dict:
    return {"name": f"neighbours_{n}", "dataset": {"source": "npz", "path": str(npz), "resolution": 32,
                                                   "source_size": 32, "shard_size": 2000, "holdout_fraction": 0.05},
            "levels": [{"kind": "cascade", "pool": 8, "channels": 3, "sigma": 0.5}],
            "sampling": {"guidance": [0.0, 0.0]}}


def prepare(n: int, work: Path) -> tuple[dict, Path]:
    """Synthetic images (smooth random fields, 10 labels) and the stage's inputs, built once per N."""
    from pipeline.config import parse_config
    from pipeline.plan import build_plan
    from pipeline.stages import materialize

    rng = np.random.default_rng(n)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # 32 px, neighbours that mean something
    npz = work / f"images_{n}.npz"
    np.savez(npz, images=images, labels=rng.integers(0, 10, size=n))
    data, home = config(npz, n), work / f"home_{n}"
    cfg = parse_config(data)
    plan = build_plan(cfg, home)
    for name in ("images", "level_1_latents"):
        materialize(cfg, plan, name, log=lambda _: None)
    return data, home


def measure(tree: Path, data: dict, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(data), str(home)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    """RESULTS.md's table, from the JSON: each commit's peak RSS and speed at N and 8N, and their ratios."""
    lines = ["| commit | N train images | peak RSS MiB | images/s | 8N train images | peak RSS MiB | images/s | "
             "RSS 8N / N | time per image 8N / N |", "|---|---|---|---|---|---|---|---|---|"]
    for commit in dict.fromkeys(r["commit"] for r in result["runs"]):
        a, b = sorted((r for r in result["runs"] if r["commit"] == commit), key=lambda r: r["n"])
        lines.append(f"| {commit} | {a['train_images']} | {a['peak_rss_mib']} | {a['images_per_s']} | "
                     f"{b['train_images']} | {b['peak_rss_mib']} | {b['images_per_s']} | "
                     f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x | {a['images_per_s'] / b['images_per_s']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print RESULTS.md's table of the stored results and stop")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to measure as well")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS / "neighbours_memory.json").read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="neighbours_memory_"))
    runs = []
    for n in (args.n, 8 * args.n):
        data, home = prepare(n, work)
        for tree in [ROOT, *args.tree]:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                    text=True).stdout.strip()
            got = measure(tree, data, home)
            images = round(n * (1 - data["dataset"]["holdout_fraction"]))
            runs.append({"stage": "level_neighbours", "commit": commit, "n": n, "train_images": images,
                         "peak_rss_mib": round(got["peak_rss_mib"], 1), "seconds": round(got["seconds"], 2),
                         "images_per_s": round(images / got["seconds"], 1)})
            print(json.dumps(runs[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "neighbours_memory.json").write_text(json.dumps({
        "command": "python benchmarks/neighbours_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "images": "synthetic 32 px, 4x4 blocks",
        "peak_rss": "VmHWM of a fresh process during the build (reset through clear_refs), above its VmRSS before it", "runs": runs},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
