"""What the last materialization did, stage by stage: ``python -m assets.run_report`` (``make run`` ends with it).

It reads the newest run of $DAGSTER_HOME's instance (each step's wall time, cache hit or miss) and the experiment's
evaluation ($NESTED_CONFIG's FID over its sampling seeds against the real-data floor, KID, precision/recall, near
copies, the sample grid), prints a table and writes it as JSON: $NESTED_HOME/run_report.json, or --out.
`benchmarks/default_run.py` keeps a cold run's report as benchmarks/results/default_run.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from dagster import DagsterInstance

from pipeline.config import load_config, nested_home
from pipeline.fingerprints import config_fingerprint
from pipeline.plan import build_plan
from pipeline.runtime import cpu_has_native_bf16
from pipeline.schema import Config


def machine() -> dict:
    """The CPU (model, cores this process may use, native bf16) and the GPU, if torch sees one."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if platform.system() == "Linux" else ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor() or None)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "native_bf16": cpu_has_native_bf16(), "gpu": gpu, "torch": torch.__version__}


def step_times(instance: DagsterInstance, run_id: str | None = None) -> dict:
    """The run (default: the newest) and its steps in the order they started: seconds, status, cache hit or miss."""
    if run_id is None:
        newest = instance.get_run_records(limit=1)
        run_id = newest[0].dagster_run.run_id if newest else None
    record = instance.get_run_record_by_id(run_id) if run_id else None
    if record is None:
        raise SystemExit(f"no run {run_id or 'at all'} in the Dagster instance at {instance.root_directory}: "
                         "materialize first (make run)")
    run = record.dagster_run
    steps = []
    for s in sorted(instance.get_run_step_stats(run.run_id), key=lambda s: s.start_time or 0):
        caches = {str(e.asset_materialization.metadata["cache"].value)
                  for e in s.materialization_events
                  if e.asset_materialization is not None and "cache" in e.asset_materialization.metadata}
        steps.append({"step": s.step_key, "status": s.status.value if s.status else None,
                      "seconds": round(s.end_time - s.start_time, 1) if s.start_time and s.end_time else None,
                      "cache": "/".join(sorted(caches)) or None})
    start, end = record.start_time, record.end_time
    return {"run_id": run.run_id, "status": run.status.value, "job": run.job_name,
            "started": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="seconds") if start else None,
            "wall_seconds": round(end - start, 1) if start and end else None, "steps": steps}


def quality(cfg: Config, home: Path) -> dict | None:
    """The evaluation's figures, or None where the experiment has not been evaluated."""
    plan = build_plan(cfg, home)
    evaluation = plan["evaluation"].artifact
    if not evaluation.is_complete():
        return None
    row = evaluation.metadata()["row"]
    keep = ("num_samples", "seeds", "fid_seeds", "fid_mean", "fid_std", "fid_floor", "kid", "fid_holdout",
            "precision", "recall", "near_copy_fraction", "near_copy_quantile", "reference_images", "gflops_per_image")
    out = {k: row.get(k) for k in keep}
    out["fid_over_floor"] = round(row["fid_mean"] / row["fid_floor"], 3) if row.get("fid_floor") else None
    out["grid"] = str(plan["samples"].path / "grid.png")
    return out


def report(cfg: Config, home: Path, instance: DagsterInstance, run_id: str | None = None) -> dict:
    return {"experiment": cfg.name, "config_fingerprint": config_fingerprint(cfg, home),
            "machine": machine(), "run": step_times(instance, run_id), "quality": quality(cfg, home)}


def table(rep: dict) -> str:
    run = rep["run"]
    lines = [f"run {run['run_id'][:8]} of {rep['experiment']} ({run['status']}): {run['wall_seconds']} s wall",
             f"{'step':<36}{'seconds':>9}  cache"]
    lines += [f"{s['step']:<36}{s['seconds'] if s['seconds'] is not None else '-':>9}  {s['cache'] or '-'}"
              for s in run["steps"]]
    q = rep["quality"]
    if q:
        lines.append(f"FID {q['fid_mean']:.2f} +- {q['fid_std'] or 0:.2f} over sampling seeds {q['seeds']} "
                     f"(N = {q['num_samples']}); real-data floor {q['fid_floor']:.2f} ({q['fid_over_floor']}x); "
                     f"KID {q['kid']:.4f}; precision {q['precision']:.3f}, recall {q['recall']:.3f}; grid {q['grid']}")
    return "\n".join(lines)


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)  # whole or not at all


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-id", help="a run of the instance (default: the newest)")
    ap.add_argument("--out", type=Path, help="where the JSON goes (default: $NESTED_HOME/run_report.json)")
    args = ap.parse_args(argv)
    cfg, home = load_config(), nested_home()
    rep = report(cfg, home, DagsterInstance.get(), args.run_id)
    out = args.out or home / "run_report.json"
    write_json(rep, out)
    print(table(rep))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
