"""Memory and time of fingerprinting a folder source as it grows to ImageNet's size, in a fresh process per run.

Every process that builds the plan (each Dagster step, each torchrun rank, and the DataLoader workers it forks)
fingerprints the source: what that costs in memory is paid per process. Synthetic class folders of tiny files
(1,000 classes like ImageNet's), N and 8N files, 8N = 1,281,168 by default (ImageNet-1k's training set and one);
per N three runs: `cold` (every file hashed, the table written), `kept` (a new process, nothing changed: the table
read beside the listing), `one changed` (one file rewritten: the table rewritten as a stream).
Writes benchmarks/results/source_hashes_memory.json.

    .venv/bin/python benchmarks/source_hashes_memory.py [--n 160146] [--tree DIR ...] [--work DIR]
    .venv/bin/python benchmarks/source_hashes_memory.py --table     # RESULTS.md's table from the stored JSON

`--tree` measures another checkout too (e.g. a worktree of an older commit) on the same folders, with a home of its
own; its pipeline/ is put first on the import path of the measuring process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = 1000
RUNS = ("cold", "kept", "one changed")

MEASURE = r"""
import json, sys, time
from pathlib import Path
import torch  # imported before the baseline, as in every stage's process
from pipeline.ingest import source_fingerprint
from pipeline.schema import DatasetConfig

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

cfg = DatasetConfig(source="folder", path=Path(sys.argv[1]))
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
t = time.perf_counter()
fp = source_fingerprint(cfg, cache_dir=Path(sys.argv[2]))
seconds = time.perf_counter() - t
print(json.dumps({"peak_rss_mib": (status("VmHWM") - base) / 1024, "kept_rss_mib": (status("VmRSS") - base) / 1024,
                  "seconds": seconds, "fingerprint": fp}))
"""


def make_folder(root: Path, n: int) -> Path:
    """`n` files of a few bytes each in CLASSES class folders, each file's bytes its index; made once."""
    done = root / ".complete"
    if done.is_file():
        return root
    for i in range(n):
        d = root / f"n{i % CLASSES:08d}"
        if i < CLASSES:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:07d}.JPEG").write_bytes(i.to_bytes(4, "little"))
    old = 1_600_000_000  # sat on disk a while: out of the racy window, so the table may keep their hashes
    for i in range(n):
        os.utime(root / f"n{i % CLASSES:08d}" / f"{i:07d}.JPEG", (old, old))
    done.touch()
    return root


def measure(tree: Path, folder: Path, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(home)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    """RESULTS.md's table, from the JSON: per commit and run, peak memory and time at N and 8N, and their ratios."""
    lines = ["| commit | run | N files | peak MiB | s | 8N files | peak MiB | s | peak 8N / N | time per file 8N / N |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = result["runs"]
    for commit in dict.fromkeys(r["commit"] for r in runs):
        for run in RUNS:
            a, b = sorted((r for r in runs if r["commit"] == commit and r["run"] == run), key=lambda r: r["n"])
            lines.append(f"| {commit} | {run} | {a['n']} | {a['peak_rss_mib']} | {a['seconds']} | {b['n']} | "
                         f"{b['peak_rss_mib']} | {b['seconds']} | {b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x | "
                         f"{(b['seconds'] / b['n']) / (a['seconds'] / a['n']):.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print RESULTS.md's table of the stored results and stop")
    ap.add_argument("--n", type=int, default=160_146, help="N files (and 8N)")
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to measure as well")
    ap.add_argument("--work", type=Path, help="where the folders go (default: a fresh temporary folder)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads((RESULTS / "source_hashes_memory.json").read_text())))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="source_hashes_"))
    runs = []
    commits = {tree: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                                    text=True).stdout.strip() for tree in [ROOT, *args.tree]}  # at the start
    for n in (args.n, 8 * args.n):
        folder = make_folder(work / f"folder_{n}", n)
        for tree, commit in commits.items():
            home = work / f"home_{n}_{commit}"
            changed = folder / f"n{0:08d}" / f"{0:07d}.JPEG"
            changed.write_bytes((0).to_bytes(4, "little"))  # as made (another tree may have changed it)
            os.utime(changed, (1_600_000_000, 1_600_000_000))
            for run in RUNS:
                if run == "one changed":
                    changed.write_bytes(b"changed")
                    os.utime(changed, (1_600_000_100, 1_600_000_100))
                time.sleep(2.5)  # the last write out of the racy window (cache.RACY_NS): its hash may be kept
                got = measure(tree, folder, home)
                runs.append({"commit": commit, "run": run, "n": n, "peak_rss_mib": round(got["peak_rss_mib"], 1),
                             "kept_rss_mib": round(got["kept_rss_mib"], 1), "seconds": round(got["seconds"], 2),
                             "fingerprint": got["fingerprint"]})
                print(json.dumps(runs[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "source_hashes_memory.json").write_text(json.dumps({
        "command": "python benchmarks/source_hashes_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "files": f"synthetic: {CLASSES} class folders of 4-byte files, dated back out of the racy window",
        "peak_rss": "VmHWM of a fresh process during source_fingerprint (reset through clear_refs), above its VmRSS "
                    "before it; kept_rss_mib: what it still holds after",
        "runs": runs}, indent=1) + "\n")
    print(table(json.loads((RESULTS / "source_hashes_memory.json").read_text())))


if __name__ == "__main__":
    main()
