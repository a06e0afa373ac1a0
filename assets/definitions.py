"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here.

The experiment comes from $NESTED_CONFIG (default configs/emoji.yaml) and artifacts go under $NESTED_HOME
(default .nested/). A config with an invalid value fails here, at load, naming the field.
"""
from __future__ import annotations

from pathlib import Path

from dagster import (AssetSelection, Definitions, PipesSubprocessClient, define_asset_job, in_process_executor,
                     multiprocess_executor)

from pipeline.config import Config, load_config, nested_home
from pipeline.plan import build_plan

from .evaluation import evaluation_asset, neighbours_asset, reference_asset, samples_asset
from .stages import all_assets
from .training import level_model_asset


def build_definitions(cfg: Config | None = None, home: Path | None = None) -> Definitions:
    cfg = cfg or load_config()
    home = Path(home) if home else nested_home()
    plan = build_plan(cfg, home)
    models = [level_model_asset(cfg, plan, level, home) for level in range(cfg.num_levels)]
    return Definitions(
        assets=all_assets(cfg, plan) + models + [samples_asset(cfg, plan), reference_asset(cfg, plan),
                                                 evaluation_asset(cfg, plan), neighbours_asset(cfg, plan)],
        jobs=[
            define_asset_job("all_assets", AssetSelection.all(), description=f"Every asset of '{cfg.name}'."),
            # Levels train on latents, not on each other's models: one process per level, side by side.
            define_asset_job("train_levels_in_parallel", AssetSelection.assets(*models),
                             executor_def=multiprocess_executor,
                             description="Every level's model at once (each its own Pipes subprocess)."),
        ],
        resources={"pipes_subprocess_client": PipesSubprocessClient()},
        # Stages are few and coarse and each uses every core itself: in-process avoids a subprocess per step.
        executor=in_process_executor,
    )


defs = build_definitions()
