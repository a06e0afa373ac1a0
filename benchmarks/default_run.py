"""The first run a newcomer makes, measured: a cold `make run` of the emoji default, and the levers that chose it.

    .venv/bin/python benchmarks/default_run.py cold       # fresh clone of HEAD: make setup, make run; the report kept
    .venv/bin/python benchmarks/default_run.py levers     # Inception and level-0 step speed, this machine (~4 min)
    .venv/bin/python benchmarks/default_run.py trials --arm b64 --batch 64 --steps 1000,1500,2000   # level-0 recipe
    .venv/bin/python benchmarks/default_run.py table      # RESULTS.md's tables from the JSON (glance.py --write)

Everything goes to benchmarks/results/default_run.json, each command its own key. `cold` clones HEAD into a temp
dir with its own venv, data, $NESTED_HOME and $DAGSTER_HOME (the Makefile's defaults inside it), so nothing of
this checkout is reused; `make run` ends with `assets.run_report`, whose JSON (each step's wall time, the FID over
the config's sampling seeds against the real-data floor) is kept with the setup's and the whole run's wall time,
the machine and the targets; the grid is copied to docs/images/emoji_default_grid.png. `trials` trains configs/
emoji.yaml's level 0 with another batch size and lengths (each length continues the last: one run) and scores
each on selection sampling seed 1000, which the default never reports. Run `cold` and `levers` on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "default_run.json"
GRID = ROOT / "docs" / "images" / "emoji_default_grid.png"
TARGETS = {"cold_seconds": 15 * 60, "fid_over_floor": 2.5}  # issue 37: setup included; mean over the sampling seeds


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    began = time.perf_counter()
    with open(log, "a") as f:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}); its output: {log}")
    return round(time.perf_counter() - began, 1)


def cpu_times() -> list[int]:
    """The machine's CPU time so far by kind (user, nice, system, idle, iowait, irq, softirq, steal), Linux only."""
    stat = Path("/proc/stat")
    return [int(v) for v in stat.read_text().split("\n")[0].split()[1:9]] if stat.exists() else []


def shares(before: list[int], after: list[int]) -> dict | None:
    """Where the machine's CPU time went between two cpu_times(): a quiet run is busy, and neither idle nor stolen
    (a hypervisor's other guests)."""
    if not before or not after:
        return None
    d = [b - a for a, b in zip(before, after)]
    total = sum(d) or 1
    return {"busy": round((d[0] + d[1] + d[2] + d[5] + d[6]) / total, 3), "idle": round((d[3] + d[4]) / total, 3),
            "steal": round(d[7] / total, 3)}


def cold_run(keep: bool) -> dict:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    if dirty:
        print("note: the clone is HEAD; uncommitted changes in this checkout are not in it", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="default_run_"))
    clone, log = work / "clone", work / "make.log"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    # the Makefile's own defaults, inside the clone: nothing of this checkout's artifacts or instance is seen
    env = {k: v for k, v in os.environ.items() if k not in ("NESTED_HOME", "DAGSTER_HOME", "NESTED_CONFIG",
                                                            "VIRTUAL_ENV", "PYTHONPATH")}
    print(f"cold run in {clone} (log: {log})", flush=True)
    before = cpu_times()
    setup = timed(["make", "setup"], clone, env, log)
    print(f"make setup: {setup} s", flush=True)
    run = timed(["make", "run"], clone, env, log)
    print(f"make run: {run} s", flush=True)
    cpu = shares(before, cpu_times())
    report = json.loads((clone / ".nested" / "run_report.json").read_text())
    quality = report["quality"]
    GRID.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(quality["grid"], GRID)
    quality["grid"] = str(GRID.relative_to(ROOT))
    total = round(setup + run, 1)
    result = {"command": "python benchmarks/default_run.py cold", "commit": head.strip(),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "setup_seconds": setup, "make_run_seconds": run, "cold_seconds": total, "cpu_time_shares": cpu,
              "targets": TARGETS,
              "met": {"cold_seconds": total <= TARGETS["cold_seconds"],
                      "fid_over_floor": quality["fid_over_floor"] <= TARGETS["fid_over_floor"]},
              **report}
    if not keep:
        shutil.rmtree(work, ignore_errors=True)  # the clone's venv alone is several GB
    return result


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def machine() -> dict:
    sys.path.insert(0, str(ROOT))
    from assets.run_report import machine as this_machine

    return this_machine()


def on(m: dict) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, native bf16: {'yes' if m['native_bf16'] else 'no'}"
            f"{', GPU ' + m['gpu'] if m['gpu'] else ''}")


def cold_table(d: dict) -> str:
    """The cold run, stage by stage, with its FID against the floor."""
    q, run = d["quality"], d["run"]
    steps = [s for s in run["steps"] if s["seconds"] is not None]
    lines = [COLD_HEADER, "|---|---|", f"| `make setup` (venv, packages, npm data) | {minutes(d['setup_seconds'])} |"]
    lines += [f"| {s['step']} | {minutes(s['seconds'])} |" for s in steps if s["seconds"] >= 1]
    other = d["make_run_seconds"] - sum(s["seconds"] for s in steps if s["seconds"] >= 1)
    lines += [f"| the rest of `make run` (Dagster's start, imports, steps under 1 s, the report) | {minutes(other)} |",
              f"| **cold total** (target {minutes(d['targets']['cold_seconds'])}) | **{minutes(d['cold_seconds'])}** "
              f"({'met' if d['met']['cold_seconds'] else 'missed'}) |",
              f"| FID, N = {q['num_samples']}, sampling seeds {', '.join(map(str, q['seeds']))} | "
              f"{q['fid_mean']:.1f} +- {q['fid_std']:.1f} ({', '.join(f'{f:.1f}' for f in q['fid_seeds'])}) |",
              f"| real-data floor (held-out images) | {q['fid_floor']:.1f}: FID **{q['fid_over_floor']:.2f}x** the floor "
              f"(target {d['targets']['fid_over_floor']}x, {'met' if d['met']['fid_over_floor'] else 'missed'}) |",
              f"| KID; precision, recall; near copies | {q['kid']:.4f}; {q['precision']:.3f}, {q['recall']:.3f}; "
              f"{q['near_copy_fraction']:.3f} |",
              f"| machine; commit | {on(d['machine'])}; {d['commit'][:7]} |"]
    if d.get("cpu_time_shares"):
        c = d["cpu_time_shares"]
        lines.append(f"| the CPUs during the run | busy {c['busy']:.0%}, idle {c['idle']:.0%}, stolen by the hypervisor "
                     f"{c['steal']:.0%} |")
    return "\n".join(lines)


def levers_table(d: dict) -> str:
    rows = [LEVERS_HEADER, "|---|---|---|"]
    rows += [f"| Inception forward, {i['threads']} thread{'s' * (i['threads'] > 1)} | {i['path']} | "
             f"{i['images_per_sec']:.2f} img/s |" for i in d["inception"]]
    rows += [f"| {r['model']} training step, {r['threads']} thread{'s' * (r['threads'] > 1)} | "
             f"{r['resolution']} px, batch {r['batch']} | {r['sec_per_step']:.3f} s |" for r in d["level0_step"]]
    rows.append(f"| machine | {on(d['machine'])} | |")
    return "\n".join(rows)


def trials_table(rows: list[dict]) -> str:
    lines = [TRIALS_HEADER, "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arm"], r["steps"])):
        changed = ", ".join(f"`{k}: {v}`" for k, v in r.get("overrides", {}).items()) or "-"
        lines.append(f"| {r['arm']} | {changed} | {r['batch']} | {r['steps']} | {r['steps'] * r['batch']:,} | "
                     f"{r['steps'] * r['sec_per_step']:.0f} | {r['fid']:.1f} | {r['fid'] / r['fid_floor']:.2f}x | "
                     f"{r['precision']:.3f}, {r['recall']:.3f} |")
    return "\n".join(lines)


COLD_HEADER = "| stage | wall time |"
LEVERS_HEADER = "| lever | setting | measured |"
TRIALS_HEADER = ("| arm | other settings changed | level-0 batch | level-0 steps | images seen | "
                 "level-0 training, s (1 thread) | FID, selection seed 1000 | FID / floor | precision, recall |")


# the JSON's key -> RESULTS.md's table of it (benchmarks/glance.py writes them in place)
TABLES = {"cold": cold_table, "levers": levers_table, "trials": trials_table}


def tables(data: dict) -> dict[str, str]:
    return {k: make(data[k]) for k, make in TABLES.items() if k in data}


def levers() -> dict:
    """What the default's speed levers give on this machine: the Inception's forward (the reference stage's path
    before and now) and a bare level-0 training step by resolution, batch and threads."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from models.denoiser import build_denoiser
    from pipeline import metrics
    from pipeline.runtime import large_blocks_returned

    out = {"inception": [], "level0_step": []}
    images = torch.rand(40, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 255
    net = metrics.InceptionFeatures("cpu")
    paths = {"before: 64 images a forward, blocks above 4 MiB mapped afresh": (64, 4 << 20),
             "now: 8 images a forward, blocks up to 32 MiB from the heap": (metrics.CPU_CHUNK, metrics.HEAP_BLOCKS)}
    chunk, heap = metrics.CPU_CHUNK, metrics.HEAP_BLOCKS
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for label, (metrics.CPU_CHUNK, metrics.HEAP_BLOCKS) in paths.items():
            with large_blocks_returned(), torch.inference_mode():  # the streaming stages' scope
                net(images[:8])
                began = time.perf_counter()
                net(images[8:])
                seconds = time.perf_counter() - began
            out["inception"].append({"path": label, "threads": threads, "images_per_sec": round(32 / seconds, 2)})
            print(out["inception"][-1], flush=True)
    metrics.CPU_CHUNK, metrics.HEAP_BLOCKS = chunk, heap
    def step_seconds(model, shape, cond_shapes, batch):
        """The median of 8 bare training steps (forward, MSE, backward, AdamW) after 2 warm-up steps."""
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x, conds = torch.randn(batch, *shape), [torch.randn(batch, *c) for c in cond_shapes]
        t = torch.randint(0, 1000, (batch,))
        times = []
        for _ in range(10):
            began = time.perf_counter()
            loss = F.mse_loss(model(x, t, conds), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - began)
        return round(sorted(times[2:])[4], 4)

    conds0 = [(32, 4, 4), (16, 2, 2)]
    for res in (16, 32):
        for batch in (64, 32):
            for threads in (2, 1):
                torch.set_num_threads(threads)
                torch.manual_seed(0)
                model = build_denoiser("unet", "tiny", (3, res, res), conds0)
                out["level0_step"].append({"model": "unet-tiny", "resolution": res, "batch": batch, "threads": threads,
                                           "sec_per_step": step_seconds(model, (3, res, res), conds0, batch)})
                print(out["level0_step"][-1], flush=True)
    for threads in (2, 1):  # the 4x4x32 level: does a small model use a second core?
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_denoiser("uvit", "tiny", (32, 4, 4), [(16, 2, 2)])
        out["level0_step"].append({"model": "uvit-tiny (level 1)", "resolution": 4, "batch": 64, "threads": threads,
                                   "sec_per_step": step_seconds(model, (32, 4, 4), [(16, 2, 2)], 64)})
        print(out["level0_step"][-1], flush=True)
    return out


SELECTION_SEED = 1000  # the trials' sampling seed; the default reports seeds 0-2


def trials(arm: str, batch: int, steps: list[int], home: Path, overrides: dict | None = None) -> list[dict]:
    """configs/emoji.yaml's level 0 at `batch` for each of `steps` in order (each continues the last), with
    `overrides` (config paths -> values) and every other setting the default's, scored on the selection seed."""
    overrides = overrides or {}
    sys.path.insert(0, str(ROOT))
    from dagster import DagsterInstance

    from assets.definitions import materialize_variants
    from pipeline.config import load_config
    from pipeline.plan import build_plan

    cfg = load_config(ROOT / "configs" / "emoji.yaml")
    instance, rows = DagsterInstance.ephemeral(), []
    for n in steps:
        name, began = f"{arm}_{n}", time.perf_counter()
        configs, _ = materialize_variants(cfg, home, {name: {
            "level0.train.steps": n, "level0.train.batch_size": batch,
            "sampling.seed": SELECTION_SEED, "sampling.eval_seeds": 1, **overrides}}, instance)
        plan = build_plan(configs[name], home)
        row, model = plan["evaluation"].artifact.metadata()["row"], plan["level_0_model"].artifact.metadata()
        rows.append({"arm": arm, "batch": batch, "steps": n, "overrides": overrides, "seed": row["seeds"][0],
                     "fid": row["fid_mean"],
                     "fid_floor": row["fid_floor"], "kid": row["kid"], "precision": row["precision"],
                     "recall": row["recall"], "sec_per_step": model.get("sec_per_step"),
                     "seconds": round(time.perf_counter() - began, 1)})
        print(rows[-1], flush=True)
    return rows


def update(path: Path, key: str, value) -> None:
    """Set one key of the results JSON, the others kept; written whole or not at all."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["cold", "levers", "trials", "table"])
    ap.add_argument("--keep", action="store_true", help="cold: keep the clone (venv, artifacts, log) afterwards")
    ap.add_argument("--arm", help="trials: the arm's name")
    ap.add_argument("--batch", type=int, default=64, help="trials: level 0's batch size")
    ap.add_argument("--steps", default="1000,1500,2000", help="trials: level 0's lengths, in order")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="trials: another setting changed, e.g. level0.train.lr=2e-3 (YAML value; repeatable)")
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("NESTED_HOME", ROOT / ".nested")),
                    help="trials: the artifact root")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.command == "cold":
        update(args.out, "cold", cold_run(args.keep))
    elif args.command == "levers":
        update(args.out, "levers", {"machine": machine(), **levers()})
    elif args.command == "trials":
        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        rows = trials(args.arm, args.batch, [int(s) for s in args.steps.split(",")], args.home, overrides)
        data = json.loads(args.out.read_text()) if args.out.exists() else {}
        kept = [r for r in data.get("trials", []) if r["arm"] != args.arm]
        update(args.out, "trials", kept + rows)
    print("\n\n".join(t for t in tables(json.loads(args.out.read_text())).values()))


if __name__ == "__main__":
    main()
