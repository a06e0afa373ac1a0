"""Materializing an experiment's assets in-process, as the code location defines them (for tests and scripts)."""
from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, ExecuteInProcessResult, materialize

from pipeline.config import Config

from .definitions import build_definitions


def run_assets(cfg: Config, home: Path, instance: DagsterInstance | None = None, names: list[str] | None = None,
               **kwargs) -> ExecuteInProcessResult:
    """Materialize the experiment's assets (or those named) with their checks, into `instance` (default: an
    ephemeral one)."""
    defs = build_definitions(cfg, home)
    assets = [a for a in defs.assets if names is None or a.key.to_user_string() in names]
    checks = [c for c in defs.asset_checks if names is None or c.check_key.asset_key.to_user_string() in names]
    return materialize([*assets, *checks], instance=instance or DagsterInstance.ephemeral(),
                       resources=defs.resources, selection=names, **kwargs)
