"""Launch one run of the given assets through a running webserver, as the UI's Materialize button does, and wait.

    python -m assets.launch --url http://127.0.0.1:3000 images [encoder_features ...]

The run goes through the deployment's run launcher (on Kubernetes: a run pod, and a pod per step with
`compute.engine: k8s`), so it is the check that a deployment works end to end. Exit status: 0 when the run
succeeded (each asset's cache flag is printed), 1 when it failed (its errors are printed), 2 when the code
location does not load.
"""
from __future__ import annotations

import argparse
import sys

from .ui_client import DagsterUI, RunFailed, load_error


def launch_and_wait(ui: DagsterUI, keys: list[str], timeout: float) -> None:
    """One run of exactly `keys`; prints its URL, then each materialized asset's cache flag. Raises RunFailed."""
    run_id = ui.launch_assets(sorted(keys))
    print(f"launched run {run_id}: {ui.url}/runs/{run_id}", flush=True)
    ui.wait_for_run(run_id, timeout=timeout)
    for asset, md in sorted(ui.materialization_metadata(run_id).items()):
        print(f"  {asset:<20} cache {md.get('cache')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assets.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("assets", nargs="+", help="asset names, e.g. images encoder_features")
    ap.add_argument("--url", default="http://127.0.0.1:3000", help="the webserver (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run (default: %(default)s)")
    args = ap.parse_args(argv)

    ui = DagsterUI(args.url)
    broken = {e["name"]: err for e in ui.wait_loaded() if (err := load_error(e)) is not None}
    for name, err in broken.items():
        print(f"code location {name} failed to load:\n{err}", file=sys.stderr)
    if broken:
        return 2
    try:
        launch_and_wait(ui, args.assets, args.timeout)
    except RunFailed as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
