"""What verifying artifacts costs on a cache hit, per artifact of a materialized experiment.

    NESTED_CONFIG=configs/emoji.yaml python benchmarks/verify_cost.py [--out FILE]

For every artifact of the plan: the cache-hit check (`reusable`: what materializing an unchanged asset does, reading
nothing), a reader's first use in a process (`require`), a second use in the same process, and the `files_intact`
check's full hash, each but the second use timed as in a process that has verified nothing yet. The files are in the page cache (a first pass reads them); the figures are
the medians of --repeats runs, each in a fresh memo. Run as a file, it measures whatever `pipeline` is first on
PYTHONPATH, so the same script times two versions of the code on one artifact root.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fresh(fn) -> float:
    """The time of `fn` in a process that has verified nothing yet (the memo of verified files emptied)."""
    import pipeline.cache as cache

    if hasattr(cache, "_verified"):  # older code keeps no memo
        cache._verified.clear()
    return timed(fn)


def measure(repeats: int) -> dict:
    import pipeline.cache as cache
    from pipeline.config import load_config, nested_home
    from pipeline.plan import build_plan

    cfg, home = load_config(), nested_home()
    plan = build_plan(cfg, home)
    missing = [n for n, st in plan.items() if not st.artifact.is_complete()]
    if missing:
        raise SystemExit(f"materialize {', '.join(missing)} first (under {home})")
    for st in plan.values():  # a first pass: the files in the page cache, as on a machine that just built them
        st.artifact.damage(full=True)
    rows = {}
    for name, st in plan.items():
        art, runs = st.artifact, []
        for _ in range(repeats):
            runs.append({"cache_hit_check": fresh(lambda: art.reusable(log=lambda m: None)),
                         "reader_first_use": fresh(art.require), "reader_second_use": timed(art.require),
                         "files_intact": fresh(lambda: art.damage(full=True))})
        files = art.metadata()["files"]
        rows[name] = {"files": len(files), "bytes": sum(size for size, _ in files.values()),
                      **{k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}}
    total = {k: round(sum(r[k] for r in rows.values()), 4) for k in next(iter(rows.values()))}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(cache.__file__).parent,
                            capture_output=True, text=True).stdout.strip()
    return {"experiment": cfg.name, "home": str(home), "code": f"{Path(cache.__file__).parent.parent} at {commit}",
            "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
            "repeats": repeats, "seconds_per_artifact": rows, "total": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the JSON here too")
    args = ap.parse_args(argv)
    result = measure(args.repeats)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
