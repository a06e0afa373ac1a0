"""Regenerate the pictures in docs/images/ from a trained experiment (default: the CPU ablation's L = 3 base).

Materializes that experiment's `variations` and `level_neighbours` (and whatever they read; cached artifacts are
reused), copies their pictures here and draws two lineages with `python -m pipeline.lineage`:

    NESTED_HOME=$PWD/.nested .venv/bin/python docs/make_pictures.py   # about 40 minutes of one core, cold
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def main(argv=None) -> None:
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from assets.definitions import build_definitions
    from pipeline import lineage
    from pipeline.config import load_config, nested_home
    from pipeline.plan import build_plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ablation_cpu.yaml")
    args = ap.parse_args(argv)
    cfg, home = load_config(args.config), nested_home()
    wanted = AssetSelection.assets("variations", "level_neighbours", "samples").upstream()
    defs = Definitions.merge(build_definitions(cfg, home), Definitions(jobs=[define_asset_job("pictures", wanted)]))
    with DagsterInstance.get() as instance:
        assert defs.resolve_job_def("pictures").execute_in_process(instance=instance).success
    plan = build_plan(cfg, home)
    IMAGES.mkdir(exist_ok=True)
    shutil.copy(plan["variations"].path / "variations.png", IMAGES / "variations.png")
    shutil.copy(plan["level_neighbours"].path / "neighbours.png", IMAGES / "neighbours.png")
    print("kept similarity:", json.dumps(plan["variations"].artifact.metadata()["similarity"], indent=1))
    lineage.main(["0", "--config", args.config, "--out", str(IMAGES / "lineage_sample.png")])
    top = cfg.num_levels - 1
    lineage.main([f"z{top}/seed0/0", "--config", args.config, "--out", str(IMAGES / "lineage_variation.png")])


if __name__ == "__main__":
    main()
