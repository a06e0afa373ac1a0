"""What the Dagster UI shows stale or missing, why, and the command that rebuilds exactly that.

    python -m assets.stale [--url http://127.0.0.1:3000] [--launch]

With --url it asks a running webserver; without, it runs the same GraphQL query in-process against
workspace.yaml and the instance in $DAGSTER_HOME (default .dagster_home/, as the Makefile's). Dagster's
staleness is not transitive (a stale asset's children read FRESH until it is rerun), so the command selects
every stale or missing asset with everything downstream of it (`name*`).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from dagster import DagsterInstance
# Private, as dagster-graphql's own CLI uses them: no public API loads a workspace for in-process GraphQL.
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql import __version__
from dagster_graphql.cli import execute_query

from .launch import launch_and_wait
from .ui_client import ROOT, DagsterUI, load_error

UNSYNCED = {"STALE", "MISSING"}


@contextmanager
def in_process(workspace: Path = ROOT / "workspace.yaml", read_only: bool = True) -> Iterator[DagsterUI]:
    """The GraphQL schema the webserver serves, executed here (as `dagster-graphql -w` does): no server needed.
    `read_only=False` allows the mutations a user's UI has, such as reloading the code location after an edit."""
    home = dagster_home()
    if not home.is_dir():  # no instance yet: nothing was ever materialized, every asset reads MISSING
        print(f"note: no Dagster instance at {home} (set DAGSTER_HOME): nothing materialized yet", file=sys.stderr)
    with (DagsterInstance.from_config(str(home)) if home.is_dir() else DagsterInstance.ephemeral()) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)]), version=__version__,
                                    read_only=read_only, code_server_log_level="WARNING") as ctx:
        yield DagsterUI(execute=lambda q, variables: execute_query(ctx, q, variables))


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or ROOT / ".dagster_home").resolve()  # Dagster wants it absolute


def why(asset: str, info: dict) -> str:
    if info["status"] == "MISSING":
        return "never materialized"
    out = []
    for c in info["causes"]:
        if c["category"] == "CODE" and c["key"] == asset:
            out.append("code version changed")  # here: the config lineage of this stage changed
            continue
        text = c["reason"] if c["key"] == asset else f"{c['key']} {c['reason']}"
        out.append(text + (f" ({c['dependency']})" if c["dependency"] and c["dependency"] not in text else ""))
    return "; ".join(out)


def downstream(assets: dict[str, dict], roots: set[str]) -> set[str]:
    """`roots` and every asset that depends on one of them, however indirectly."""
    children: dict[str, set[str]] = {}
    for name, info in assets.items():
        for dep in info["deps"]:
            children.setdefault(dep, set()).add(name)
    seen, todo = set(), list(roots)
    while todo:
        if (name := todo.pop()) not in seen:
            seen.add(name)
            todo.extend(children.get(name, ()))
    return seen


def selection_roots(assets: dict[str, dict]) -> list[str]:
    """The unsynced assets not already downstream of another unsynced one: `a*,b*` over these covers all."""
    unsynced = {a for a, info in assets.items() if info["status"] in UNSYNCED}
    return sorted(a for a in unsynced if not any(a in downstream(assets, {b}) for b in unsynced - {a}))


def selection(roots: list[str]) -> str:
    return ",".join(f"{r}*" for r in roots)  # the trailing * adds everything downstream


def materialize_command(roots: list[str]) -> str:
    env = {k: os.environ[k] for k in ("NESTED_CONFIG", "NESTED_HOME") if os.environ.get(k)}
    env["DAGSTER_HOME"] = str(dagster_home())  # the instance the UI reads: record the runs there
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"{prefix} dagster asset materialize -m assets.definitions --select {shlex.quote(selection(roots))}"


def report(assets: dict[str, dict]) -> str:
    width = max(map(len, assets), default=5) + 2
    lines = [f"{'asset':<{width}}{'status':<9}why", f"{'-' * (width - 2):<{width}}{'-' * 7:<9}---"]
    lines += [f"{a:<{width}}{info['status']:<9}{why(a, info)}".rstrip() for a, info in sorted(assets.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assets.stale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running webserver (e.g. http://127.0.0.1:3000); default: in-process")
    ap.add_argument("--launch", action="store_true",
                    help="rematerialize the stale and missing assets and their downstream, and wait")
    args = ap.parse_args(argv)

    with in_process() if args.url is None else nullcontext(DagsterUI(args.url)) as ui:
        broken = {e["name"]: err for e in ui.wait_loaded() if (err := load_error(e)) is not None}
        assets = {} if broken else ui.asset_staleness()
    for name, err in broken.items():
        print(f"code location {name} failed to load:\n{err}", file=sys.stderr)
    if broken:
        return 2
    print(report(assets))
    roots = selection_roots(assets)
    targets = downstream(assets, set(roots))
    if not roots:
        print("\nEverything is fresh: nothing to rematerialize.")
        return 0
    counts = {s: sum(i["status"] == s for i in assets.values()) for s in UNSYNCED}
    print(f"\n{counts['STALE']} stale and {counts['MISSING']} missing of {len(assets)} assets; "
          f"to rematerialize them with everything downstream ({len(targets)} assets):\n"
          f"  {materialize_command(roots)}", flush=True)
    if not args.launch:
        return 0
    if args.url is None:  # no webserver: the CLI materializes them into the instance read here
        if not (dagster_home() / "dagster.yaml").is_file():
            dagster_home().mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / "dagster.yaml", dagster_home())  # telemetry off, as `make ui` sets it up
        cmd = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize", "-m", "assets.definitions",
               "--select", selection(roots)]
        return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "DAGSTER_HOME": str(dagster_home())}).returncode
    launch_and_wait(ui, sorted(targets), timeout=24 * 3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
