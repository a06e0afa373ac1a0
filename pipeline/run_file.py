"""A run file: the resolved config and its plan in one JSON file, for a training process to read as they are.

The process then neither revalidates the YAML nor rebuilds the plan (which hashes the dataset): it trains exactly
the stage the launching asset resolved. The file lies under ``$NESTED_HOME/run_configs/``, named by its content's
hash, so reruns reuse it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .cache import Artifact, stable_hash
from .config import config_from_json
from .schema import Config
from .stage import Stage


def plan_to_json(plan: dict[str, Stage]) -> dict:
    """The plan as JSON: what a training process needs to find every artifact without hashing the data again."""
    return {name: {"kind": st.kind, "fingerprint": st.fingerprint, "code_version": st.code_version,
                   "level": st.level, "home": str(st.artifact.home), "inputs": list(st.inputs),
                   "trajectory": st.trajectory}
            for name, st in plan.items()}


def plan_from_json(data: dict) -> dict[str, Stage]:
    """The inverse of plan_to_json."""
    return {name: Stage(name, Artifact(Path(v["home"]), v["kind"], v["fingerprint"], name), v["code_version"],
                        v["level"], tuple(v.get("inputs", ())), v.get("trajectory"))
            for name, v in data.items()}


def write_run_file(cfg: Config, plan: dict[str, Stage], home: Path) -> Path:
    """The run file of `cfg` and `plan` under `home` (written once; see the module docstring)."""
    run = {"config": json.loads(cfg.model_dump_json(exclude={"variants"})), "plan": plan_to_json(plan)}
    text = json.dumps(run, indent=1)
    # A variant is named '<experiment>/<variant>': one flat file name (the config refuses unsafe names).
    path = home / "run_configs" / f"{cfg.name.replace('/', '__')}-{stable_hash(run)}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temp name of its own: two runs starting at once must not write into each other's file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return path


def read_run_file(path: str | Path) -> tuple[Config, dict[str, Stage]]:
    """(config, plan) of a file write_run_file wrote."""
    run = json.loads(Path(path).read_text())
    # JSON mode, as the file was written: the config was validated when the code location loaded it.
    return config_from_json(json.dumps(run["config"])), plan_from_json(run["plan"])
