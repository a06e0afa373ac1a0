"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here.

The experiment comes from $NESTED_CONFIG (default configs/emoji.yaml) and artifacts go under $NESTED_HOME
(default .nested/). A config with an invalid value fails here, at load, naming the field.
"""
from __future__ import annotations

from pathlib import Path

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from pipeline.config import Config, load_config, nested_home
from pipeline.plan import build_plan

from .stages import all_assets


def build_definitions(cfg: Config | None = None, home: Path | None = None) -> Definitions:
    cfg = cfg or load_config()
    plan = build_plan(cfg, Path(home) if home else nested_home())
    return Definitions(
        assets=all_assets(cfg, plan),
        jobs=[define_asset_job("all_assets", AssetSelection.all(), description=f"Every asset of '{cfg.name}'.")],
        # Stages are few and coarse and each uses every core itself: in-process avoids a subprocess per step.
        executor=in_process_executor,
    )


defs = build_definitions()
