"""A small client of the Dagster webserver's GraphQL API, and a `dagster dev` that can be stopped.

Staleness is public only through GraphQL (`assetNodes { staleStatus staleCauses }`), so the
stale view and the UI test read it, launch runs and read materialization metadata the way the UI does. The
same client runs a query in-process when given an `execute` function (see `assets.stale`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
ASSET_JOB = "__ASSET_JOB"  # the implicit job holding every asset: the UI's Materialize button launches it
DONE = {"SUCCESS", "FAILURE", "CANCELED"}

STALENESS_QUERY = """
query Staleness {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    isMaterializable
    staleStatus
    staleCauses { key { path } category reason dependency { path } }
  }
}"""

# The UI's own mutation (LaunchAssetExecutionButton): run config {} and the asset keys on the asset job.
LAUNCH_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id } }
    ... on Error { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
  }
}"""

LOCATIONS_QUERY = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { ...Entry } }
    ... on PythonError { message }
  }
}
fragment Entry on WorkspaceLocationEntry {
  name
  loadStatus
  locationOrLoadError {
    __typename
    ... on RepositoryLocation { repositories { name } }
    ... on PythonError { message errorChain { error { message } } }
  }
}"""

RUN_EVENTS_QUERY = """
query RunEvents($runId: ID!, $after: String) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(afterCursor: $after) {
        cursor hasMore
        events {
          __typename
          ... on MessageEvent { message stepKey level }
          ... on ErrorEvent { error { message errorChain { error { message } } } }
        }
      }
    }
  }
}"""

MATERIALIZATIONS_QUERY = """
query Materializations($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      assetMaterializations {
        assetKey { path }
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on PathMetadataEntry { path }
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on BoolMetadataEntry { boolValue }
          ... on JsonMetadataEntry { jsonString }
          ... on MarkdownMetadataEntry { mdStr }
        }
      }
    }
    ... on Error { message }
  }
}"""


class GraphQLError(RuntimeError):
    pass


class RunFailed(RuntimeError):
    pass


def key_name(key: dict | None) -> str | None:
    """GraphQL's {path: [...]} as the asset's user string ('level_0_model'); None stays None."""
    return None if key is None else "/".join(key["path"])


def python_error(err: dict) -> str:
    """A PythonError's message with the messages of its chained causes (the config error is usually a cause)."""
    msgs = [err.get("message", "").strip()]
    msgs += [link["error"]["message"].strip() for link in err.get("errorChain") or []]
    return "\n".join(m for m in msgs if m)


def load_error(entry: dict) -> str | None:
    """Why a loaded workspace entry has no definitions (e.g. the config's ConfigError), or None."""
    loaded = entry["locationOrLoadError"]
    if loaded is not None and loaded["__typename"] == "RepositoryLocation":
        return None
    return python_error(loaded or {}) or "no definitions"


class DagsterUI:
    """GraphQL of a running webserver at `url`, or of whatever `execute(query, variables) -> result` reaches."""

    def __init__(self, url: str = "http://127.0.0.1:3000", execute: Callable[[str, dict], dict] | None = None,
                 timeout: float = 120):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._execute = execute or self._post

    def _post(self, q: str, variables: dict) -> dict:
        body = json.dumps({"query": q, "variables": variables}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:  # GraphQL validation errors come back as HTTP 400 with a JSON body
            try:
                return json.loads(e.read())
            except ValueError:
                raise GraphQLError(f"{self.url}/graphql answered HTTP {e.code}") from e

    def query(self, q: str, variables: dict | None = None) -> dict:
        result = self._execute(q, variables or {})
        if result.get("errors"):
            msgs = "; ".join(e.get("message", str(e)) for e in result["errors"])
            raise GraphQLError(f"GraphQL errors: {msgs}")
        return result["data"]

    def set_nux_seen(self) -> None:
        """Dismiss the first-visit pop-up, which otherwise covers the asset graph."""
        self.query("mutation { setNuxSeen }")

    # -- code locations

    def locations(self) -> list[dict]:
        ws = self.query(LOCATIONS_QUERY)["workspaceOrError"]
        if ws["__typename"] != "Workspace":
            raise GraphQLError(f"workspace: {ws.get('message')}")
        return ws["locationEntries"]

    def wait_loaded(self, timeout: float = 180) -> list[dict]:
        """Wait until no location is LOADING; returns the entries (loaded or with their load error)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.locations()
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return entries
            if time.monotonic() > deadline:
                raise TimeoutError(f"code locations still loading after {timeout:.0f} s: {entries}")
            time.sleep(0.5)

    def reload_location(self, name: str | None = None, timeout: float = 180) -> None:
        """Re-import the code location (re-reading $NESTED_CONFIG); raise with its load error if it fails."""
        name = name or self.wait_loaded()[0]["name"]
        res = self.query("""mutation Reload($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
                              __typename ... on Error { message } } }""", {"name": name})["reloadRepositoryLocation"]
        if res["__typename"] != "WorkspaceLocationEntry":
            raise GraphQLError(f"reloading {name}: {res['__typename']}: {res.get('message')}")
        entry = next(e for e in self.wait_loaded(timeout) if e["name"] == name)
        if (error := load_error(entry)) is not None:
            raise GraphQLError(f"code location {name} failed to load:\n{error}")

    # -- staleness

    def asset_staleness(self) -> dict[str, dict]:
        """Per asset: status (FRESH, STALE, MISSING), causes [{reason, category, key, dependency}] and deps."""
        out = {}
        for node in self.query(STALENESS_QUERY)["assetNodes"]:
            if not node["isMaterializable"]:
                continue
            out[key_name(node["assetKey"])] = {
                "status": node["staleStatus"],
                "causes": [{"key": key_name(c["key"]), "category": c["category"], "reason": c["reason"],
                            "dependency": key_name(c["dependency"])} for c in node["staleCauses"]],
                "deps": [key_name(k) for k in node["dependencyKeys"]],
            }
        return out

    def unsynced(self) -> dict[str, str]:
        """The assets the UI does not show FRESH -> their status (STALE or MISSING)."""
        return {a: info["status"] for a, info in self.asset_staleness().items() if info["status"] != "FRESH"}

    # -- runs

    def launch_assets(self, keys: list[str], tags: dict[str, str] | None = None) -> str:
        """Launch one run of the asset job materializing exactly `keys`, with their checks; returns the run id."""
        keys = sorted(set(keys))
        nodes = self.query("""query Where($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {
                                assetKey { path } jobNames repository { name location { name } }
                                assetChecksOrError { ... on AssetChecks { checks { name } } } } }""",
                           {"keys": [{"path": k.split("/")} for k in keys]})["assetNodes"]
        # as the UI's Materialize button does: the selected assets' checks run (and block) in the same run
        checks = [{"assetKey": n["assetKey"], "name": c["name"]}
                  for n in nodes for c in n["assetChecksOrError"].get("checks", [])]
        missing = set(keys) - {key_name(n["assetKey"]) for n in nodes}
        if missing:
            raise GraphQLError(f"no such assets: {sorted(missing)}")
        repos = {(n["repository"]["location"]["name"], n["repository"]["name"]) for n in nodes}
        if len(repos) != 1:
            raise GraphQLError(f"assets span several code locations: {sorted(repos)}")
        (location, repo), = repos
        job = next(j for j in nodes[0]["jobNames"] if j.startswith(ASSET_JOB))
        params = {"mode": "default", "runConfigData": "{}",
                  "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
                  "selector": {"repositoryLocationName": location, "repositoryName": repo, "pipelineName": job,
                               "assetSelection": [{"path": k.split("/")} for k in keys], "assetCheckSelection": checks}}
        res = self.query(LAUNCH_MUTATION, {"executionParams": params})["launchPipelineExecution"]
        if res["__typename"] != "LaunchRunSuccess":
            detail = res.get("message") or res.get("errors") or res.get("invalidStepKey")
            raise GraphQLError(f"launch of {keys} refused: {res['__typename']}: {detail}")
        return res["run"]["id"]

    def run_status(self, run_id: str) -> str:
        run = self.query("""query Status($runId: ID!) { runOrError(runId: $runId) {
                              __typename ... on Run { status } ... on Error { message } } }""",
                         {"runId": run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise GraphQLError(f"run {run_id}: {run.get('message')}")
        return run["status"]

    def run_errors(self, run_id: str) -> list[str]:
        """The run's error events (step failures, run failure, engine errors) and its ERROR-level messages."""
        errors, after = [], None
        while True:
            conn = self.query(RUN_EVENTS_QUERY, {"runId": run_id, "after": after})["runOrError"]["eventConnection"]
            for ev in conn["events"]:
                if ev.get("error") or ev.get("level") in ("ERROR", "CRITICAL"):
                    text = python_error(ev["error"]) if ev.get("error") else ev.get("message", "")
                    if all(text not in e for e in errors):  # a step's error comes back in the run's failure
                        errors.append(f"[{ev['stepKey']}] {text}" if ev.get("stepKey") else text)
            if not conn["hasMore"]:
                return errors
            after = conn["cursor"]

    def wait_for_run(self, run_id: str, timeout: float = 600, poll: float = 1.0) -> str:
        """Wait for the run to end; returns SUCCESS, raises RunFailed with its errors otherwise."""
        deadline = time.monotonic() + timeout
        while (status := self.run_status(run_id)) not in DONE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")
            time.sleep(poll)
        if status != "SUCCESS":
            errors = "\n".join(self.run_errors(run_id)) or "(no error events)"
            raise RunFailed(f"run {run_id} ended {status}:\n{errors}")
        return status

    def materialization_metadata(self, run_id: str) -> dict[str, dict]:
        """Each asset materialized by the run -> its metadata {label: value} (e.g. 'cache': 'hit' or 'miss')."""
        run = self.query(MATERIALIZATIONS_QUERY, {"runId": run_id})["runOrError"]
        if run["__typename"] != "Run":
            raise GraphQLError(f"run {run_id}: {run.get('message')}")
        out = {}
        for mat in run["assetMaterializations"]:
            out[key_name(mat["assetKey"])] = {
                e["label"]: next((v for k, v in e.items() if k != "label"), None) for e in mat["metadataEntries"]}
        return out


# -- a `dagster dev` that starts and stops cleanly

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_sigint() -> None:
    # A process started in the background inherits SIGINT ignored, and `dagster dev` then never stops on it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGINT lets `dagster dev` stop its webserver, daemon and code servers itself; kill only what outlives it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if not _group_alive(proc.pid):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    proc.wait()


@contextmanager
def dagster_webserver(port: int | None = None, env: dict | None = None, workspace: Path = ROOT / "workspace.yaml",
                      log_path: Path | None = None, startup_timeout: float = 180) -> Iterator[DagsterUI]:
    """`dagster dev` on 127.0.0.1:`port` (a free one by default) with `env` over ours; yields its client once every
    code location has finished loading, and always stops it (SIGINT, then the process group as a last resort)."""
    port = port or free_port()
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=Path(workspace).parent, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_default_sigint,
                            start_new_session=True)  # a Ctrl-C at our terminal reaches us only; `finally` stops it

    def log_tail() -> str:  # pread: leaves the offset `dagster dev` writes at alone
        size = os.fstat(log.fileno()).st_size
        return os.pread(log.fileno(), 4000, max(size - 4000, 0)).decode(errors="replace")

    try:
        ui = DagsterUI(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {proc.returncode}:\n{log_tail()}")
            try:
                with urllib.request.urlopen(f"{ui.url}/server_info", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dagster dev not answering after {startup_timeout:.0f} s:\n{log_tail()}")
                time.sleep(0.5)
        ui.wait_loaded(max(deadline - time.monotonic(), 10))
        yield ui
    finally:
        stop_process_group(proc)
        log.close()
