"""Peak memory and time of the `reference_stats` stage as the training set grows (N and 8N images), measured in a
fresh process per run: the stage's build function alone, on an images artifact built beforehand, synthetic 16 px
images. The Inception is a stand-in TorchScript file of the same interface (2048 features per image, named by
sampling.inception_weights), so that what is measured is the stage's own memory, not the network's, and a run takes
minutes rather than the real network's 0.2 s per image; the clean-fid resizing to 299 px is the real one.
Adds its runs to benchmarks/results/reference_memory.json (a run of the same code and N replaces the stored one).

    .venv/bin/python benchmarks/reference_memory.py [--n 1000] [--pr-reference 1000] [--tree DIR [--label NAME]] ...
    .venv/bin/python benchmarks/reference_memory.py --table     # the table from the stored JSON

`--tree` measures another checkout (e.g. `git archive` of an older commit) with the same images: its pipeline/ is put
first on the import path of the measuring process; settings its schema does not know (sampling.pr_reference) are
left out for it.
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
from pipeline.schema import SamplingConfig
from pipeline.stages import build, materialize

def status(field):  # kB, from the kernel's account of this process
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

data = json.loads(sys.argv[1])
data["sampling"] = {k: v for k, v in data["sampling"].items() if k in SamplingConfig.model_fields}
cfg = parse_config(data)
plan = build_plan(cfg, Path(sys.argv[2]))
materialize(cfg, plan, "images", log=lambda _: None)  # a cache hit where this tree plans the same images
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
t = time.perf_counter()
meta = build(cfg, plan, "reference_stats", Path(tempfile.mkdtemp()), log=lambda _: None)
seconds = time.perf_counter() - t
print(json.dumps({"peak_rss_mib": (status("VmHWM") - base) / 1024, "seconds": seconds,
                  "num_reference": meta["num_reference"], "kept": meta.get("num_pr_reference", meta["num_reference"])}))
"""


def stand_in_inception(path: Path) -> None:
    """A TorchScript module with the FID Inception's interface: (B, 3, 299, 299) -> (B, 2048), non-negative."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = torch.nn.AdaptiveAvgPool2d(6)
            self.proj = torch.nn.Linear(3 * 36, 2048)

        def forward(self, x):
            return torch.relu(self.proj(self.pool(x).flatten(1)))

    torch.manual_seed(0)
    torch.jit.script(StandIn()).save(str(path))


def config(npz: Path, inception: Path, n: int, pr_reference: int) -> dict:
    return {"name": f"reference_{n}", "dataset": {"source": "npz", "path": str(npz), "resolution": 16,
                                                  "source_size": 16, "shard_size": 2000, "holdout_fraction": 0.05},
            "sampling": {"inception_weights": str(inception), "pr_reference": pr_reference},
            "compute": {"device": "cpu"}}


def prepare(n: int, work: Path, inception: Path, pr_reference: int) -> tuple[dict, Path]:
    """Synthetic images (4x4 random blocks, upsampled) and their images artifact, built once per N."""
    from pipeline.config import parse_config
    from pipeline.plan import build_plan
    from pipeline.stages import materialize

    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
    npz = work / f"images_{n}.npz"
    np.savez(npz, images=images, labels=rng.integers(0, 10, size=n))
    data, home = config(npz, inception, n, pr_reference), work / f"home_{n}"
    cfg = parse_config(data)
    materialize(cfg, build_plan(cfg, home), "images", log=lambda _: None)
    return data, home


def measure(tree: Path, data: dict, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(data), str(home)], env=env, cwd=tree,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    """The table, from the JSON: each code's peak RSS and time at N and 8N, and their ratios."""
    lines = ["| code | N train images | kept | peak RSS MiB | s | 8N train images | kept | peak RSS MiB | s | "
             "RSS 8N / N |", "|---|---|---|---|---|---|---|---|---|---|"]
    runs = {(r["tree"], r["n"]): r for r in result["runs"]}
    for (tree, n), a in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        if (b := runs.get((tree, 8 * n))) is None:
            continue
        lines.append(f"| {tree} | {a['num_reference']} | {a['kept']} | {a['peak_rss_mib']} | {a['seconds']} | "
                     f"{b['num_reference']} | {b['kept']} | {b['peak_rss_mib']} | {b['seconds']} | "
                     f"{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="print the table of the stored results and stop")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pr-reference", type=int, default=1000, help="sampling.pr_reference (the kept features)")
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to measure as well")
    ap.add_argument("--label", action="append", default=[], help="each --tree's name in the results (its path)")
    args = ap.parse_args(argv)
    labels = {ROOT: "this tree", **{tree: str(tree) for tree in args.tree}, **dict(zip(args.tree, args.label))}
    if args.table:
        print(table(json.loads((RESULTS / "reference_memory.json").read_text())))
        return
    work = Path(tempfile.mkdtemp(prefix="reference_memory_"))
    inception = work / "stand_in_inception.pt"
    stand_in_inception(inception)
    runs = []
    for n in (args.n, 8 * args.n):
        data, home = prepare(n, work, inception, args.pr_reference)
        for tree in [ROOT, *args.tree]:
            got = measure(tree, data, home)
            runs.append({"stage": "reference_stats", "tree": labels[tree], "n": n, "pr_reference": args.pr_reference,
                         "command": "python benchmarks/reference_memory.py " + " ".join(sys.argv[1:] if argv is None
                                                                                         else argv),
                         "num_reference": got["num_reference"], "kept": got["kept"],
                         "peak_rss_mib": round(got["peak_rss_mib"], 1), "seconds": round(got["seconds"], 1)})
            print(json.dumps(runs[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "reference_memory.json"
    new = {(r["tree"], r["n"]) for r in runs}
    runs = [r for r in (json.loads(path.read_text())["runs"] if path.exists() else [])
            if (r["tree"], r["n"]) not in new] + runs
    path.write_text(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "images": "synthetic 16 px, 4x4 blocks",
        "inception": "a TorchScript stand-in of 2048 features (the real network's memory is not the stage's)",
        "peak_rss": "VmHWM of a fresh process during the build (reset through clear_refs), above its VmRSS before it",
        "runs": runs}, indent=1) + "\n")
    print(table(json.loads((RESULTS / "reference_memory.json").read_text())))


if __name__ == "__main__":
    main()
