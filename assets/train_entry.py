"""The ``level_<l>_model`` asset's training process: ``python -m assets.train_entry --run-file RUN.json --level L``,
launched through Dagster Pipes (under torchrun when ``train.nproc > 1``).

It trains with ``pipeline.train.train_level`` on the config and plan the asset resolved (the run file
``pipeline.run_file.write_run_file`` wrote: nothing is rebuilt here), streams the log lines into
the run, and reports the materialization the asset shows (assets/training.py's view of the finished artifact).
Under torchrun only rank 0 talks to Dagster; the other ranks just train. By hand, run ``python -m pipeline.train_cli``.
"""
from __future__ import annotations

import argparse
import os

from dagster import (FloatMetadataValue, IntMetadataValue, JsonMetadataValue, MarkdownMetadataValue, MetadataValue,
                     PathMetadataValue, TextMetadataValue)
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

from pipeline.engine import engine_for
from pipeline.run_file import read_run_file
from pipeline.train import train_level

from .factory import shown_metadata
from .training import MODELS

_PIPES_TYPES = {MarkdownMetadataValue: "md", PathMetadataValue: "path", JsonMetadataValue: "json",
                TextMetadataValue: "text", IntMetadataValue: "int", FloatMetadataValue: "float"}


def to_pipes(metadata: dict) -> dict:
    """Asset metadata as Pipes sends it: typed values as {raw_value, type}, plain ones as they are (inferred)."""
    return {k: {"raw_value": v.value, "type": _PIPES_TYPES[type(v)]} if isinstance(v, MetadataValue) else v
            for k, v in metadata.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train one level for its asset, reporting through Dagster Pipes.")
    ap.add_argument("--run-file", required=True, help="the run file (config and plan) the asset wrote")
    ap.add_argument("--level", type=int, required=True)
    args = ap.parse_args(argv)
    cfg, plan = read_run_file(args.run_file)
    level, engine = args.level, engine_for(cfg)
    if f"level_{level}_model" not in plan:
        raise SystemExit(f"--level must be in 0..{cfg.num_levels - 1} for '{cfg.name}'")
    if DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ or int(os.environ.get("RANK", "0")) > 0:
        train_level(cfg, plan, level, engine=engine)
        return
    with open_dagster_pipes() as pipes:
        meta = train_level(cfg, plan, level, pipes.log.info, engine)
        stage = plan[f"level_{level}_model"]
        shown = shown_metadata(stage, meta, meta["cache"] == "hit", MODELS.metadata(cfg, plan, stage, meta, pipes.log))
        # The loss picture is not in it (the asset adds it, assets/training.py): Dagster's file reader tails the
        # messages file a line at a time, and a line of tens of kB is read half-written often enough to lose the report
        pipes.report_asset_materialization(metadata=to_pipes(shown), data_version=stage.fingerprint)


if __name__ == "__main__":
    main()
