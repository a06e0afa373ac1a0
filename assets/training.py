"""One training asset per level, run in a separate process through Dagster Pipes.

The subprocess is ``python -m pipeline.train`` (or ``torchrun`` around it when ``train.nproc > 1``): the
same module a user runs by hand. Levels depend on latents, never on each other's models, so they can
train in parallel under the multiprocess executor.
"""
import json
import os
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, PipesSubprocessClient, asset

from pipeline.cache import stable_hash
from pipeline.config import Config
from pipeline.plan import Stage

from .stages import Scope, png_markdown, result


def train_command(cfg: Config, level: int, home: Path) -> list[str]:
    """The command line of a level's training process; the resolved config travels as a JSON file."""
    cfg_json = cfg.model_dump_json(indent=1, exclude={"variants"})
    # A variant is named '<experiment>/<variant>': one flat file name (the config refuses unsafe names).
    path = home / "run_configs" / f"{cfg.name.replace('/', '__')}-{stable_hash(cfg_json)}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temp name of its own: two runs starting at once must not write into each other's file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(cfg_json)
        os.replace(tmp, path)
    module = ["-m", "pipeline.train", "--config", str(path), "--level", str(level), "--home", str(home)]
    nproc = cfg.train_config(level).nproc
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *module]
    return [sys.executable, *module]


def model_metadata(cfg: Config, stage: Stage, meta: dict) -> dict:
    from pipeline.costs import cost_markdown, cost_table

    spec = json.loads((stage.path / "model.json").read_text())
    costs = cost_table(cfg, spec["num_classes"])
    out = {
        "params_M": round(meta["params"] / 1e6, 3), "gflops_per_forward": round(meta["gflops_per_forward"], 4),
        "steps": meta["steps"], "final_loss": meta["final_loss"], "num_samples": meta["num_samples"],
        "condition_levels": MetadataValue.json(meta["condition_levels"]), "world_size": meta["world_size"],
        "resumed_from_step": meta["resumed_from_step"] if meta["resumed_from_step"] is not None else "none",
        "sec_per_step": meta["sec_per_step"], "samples_per_sec": meta["samples_per_sec"],
        "nested_gflops_per_step": round(costs["total_gflops_per_forward"], 4),
        "nested_vs_L1_gflops": round(costs["relative_to_baseline"], 3),
        "cost_table": MetadataValue.md(cost_markdown(costs)),
    }
    if (stage.path / "loss.png").exists():
        out["loss_curve"] = png_markdown(stage.path / "loss.png", "loss")
    return out


def level_model_asset(scope: Scope, level: int) -> AssetsDefinition:
    cfg, home, name = scope.cfg, scope.home, f"level_{level}_model"
    stage = scope.plan[name]
    tc = cfg.train_config(level)
    target = "images" if level == 0 else f"level_{level}_latents"
    conds = [f"level_{k}_latents" for k in cfg.conditions_of(level)]
    what = "pixels" if level == 0 and cfg.level0.space == "pixels" else "VAE latents" if level == 0 else "latents"
    sigmas = ", ".join(f"{c} (sigma {cfg.levels[k - 1].sigma})" for c, k in zip(conds, cfg.conditions_of(level)))

    @asset(**scope.asset_args(name, f"level_{level}", deps=[target, *conds], level=level,
                              kinds=("pytorch", "safetensors")),
           description=f"Level {level} denoiser ({tc.backbone}-{tc.size}) on {what}, conditioned on "
                       f"{sigmas or 'nothing (coarsest level)'}; trained by a Pipes subprocess.")
    def _model(context: AssetExecutionContext, pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
        hit = stage.artifact.is_complete() and not stage.artifact.damage()
        reported = {}
        if not hit:
            # The training process takes the fingerprint's lock itself (and sets a damaged model aside); under
            # torchrun this process holds it instead, since the ranks must not wait on one another.
            with stage.artifact.lock(context.log.info) if tc.nproc > 1 else nullcontext():
                hit = tc.nproc > 1 and stage.artifact.reusable(context.log.info)
                if not hit:
                    # The process logs its loss as it falls and reports its metadata through Pipes; the rendered
                    # view is read from the finished artifact, so a cache hit shows the same thing.
                    results = pipes_subprocess_client.run(command=train_command(cfg, level, home),
                                                          context=context).get_results()
                    reported = dict(results[0].metadata or {}) if results else {}
                    cache = reported.pop("cache", None)  # 'hit' when another run trained it meanwhile
                    hit = getattr(cache, "value", cache) == "hit"
        meta = stage.artifact.metadata()
        return result(stage, meta, hit, {**reported, **model_metadata(cfg, stage, meta)})

    return _model
