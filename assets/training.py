"""One training asset per level, trained in a process of its own (assets/train_entry.py) through Dagster Pipes.

The process is ``python -m assets.train_entry`` (or ``torchrun`` around it when ``train.nproc > 1``): it runs
pipeline.train.train_level and reports the materialization this asset shows, once. Levels depend on latents,
never on each other's models, so they can train in parallel under the multiprocess executor. Under
``compute.engine: k8s`` the same command runs in a training pod of its own instead (assets/k8s.py); under
``ray`` the process is the driver of a Ray Train run (pipeline/ray_engine.py), never torchrun.
"""

import sys
from contextlib import nullcontext

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, PipesSubprocessClient, asset

from pipeline.costs import cost_markdown, cost_table
from pipeline.level_kinds import level_kind
from pipeline.model_io import read_spec
from pipeline.run_file import write_run_file
from pipeline.schema import Config
from pipeline.stage import Stage

from .factory import Scope, View, png_markdown, result
from .k8s import LIGHT, k8s_train_launch, train_ranks

PICTURE = "loss_curve"  # the loss curve as an inline picture: added by the asset, never sent through Pipes


def train_command(cfg: Config, plan: dict[str, Stage], level: int, python: str = sys.executable,
                  nproc: int | None = None) -> list[str]:
    """The command line of a level's training process: the resolved config and plan travel as one JSON file.
    `nproc` processes (default: the level's train.nproc); a training pod passes its image's `python`."""
    run_file = write_run_file(cfg, plan, plan[f"level_{level}_model"].artifact.home)
    module = ["-m", "assets.train_entry", "--run-file", str(run_file), "--level", str(level)]
    nproc = cfg.train_config(level).nproc if nproc is None else nproc
    if nproc > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *module]
    return [python, *module]


def _model(cfg, plan, stage, meta, log) -> dict:
    costs = cost_table(cfg, read_spec(stage.path)["num_classes"])
    out = {
        "params_M": round(meta["params"] / 1e6, 3), "gflops_per_forward": round(meta["gflops_per_forward"], 4),
        "steps": meta["steps"], "final_loss": meta["final_loss"], "num_samples": meta["num_samples"],
        "condition_levels": MetadataValue.json(meta["condition_levels"]), "world_size": meta["world_size"],
        "resumed_from_step": meta["resumed_from_step"] if meta["resumed_from_step"] is not None else "none",
        "sec_per_step": meta["sec_per_step"], "samples_per_sec": meta["samples_per_sec"],
        "device": meta.get("device"), "precision": meta.get("precision"),
        "loader": meta.get("loader", "memory"), "loader_workers": meta.get("loader_workers", 0),
        "nested_gflops_per_step": round(costs["total_gflops_per_forward"], 4),
        "nested_vs_L1_gflops": round(costs["relative_to_baseline"], 3),
        "cost_table": MetadataValue.md(cost_markdown(costs)),
    }
    return out


def loss_picture(stage) -> dict:
    return {PICTURE: png_markdown(stage.path / "loss.png", "loss")} if (stage.path / "loss.png").exists() else {}


def _describe(cfg, stage) -> str:
    level, tc = stage.level, cfg.train_config(stage.level)
    what = level_kind(cfg, 0).what if level == 0 else "latents"
    sigmas = ", ".join(f"level_{k}_latents (sigma {cfg.level(k).sigma})" for k in cfg.conditions_of(level))
    return (f"Level {level} denoiser ({tc.backbone}-{tc.size}) on {what}, conditioned on "
            f"{sigmas or 'nothing (coarsest level)'}; trained by a Pipes subprocess.")


def level_model_asset(scope: Scope, name: str, view: View) -> AssetsDefinition:
    cfg, plan, stage = scope.cfg, scope.plan, scope.plan[name]
    nproc = cfg.train_config(stage.level).nproc
    on_k8s = cfg.compute.engine == "k8s"
    if on_k8s:  # a training pod of its own, train.nproc ranks (assets/k8s.py; imports dagster_k8s when it runs)
        nproc = train_ranks(cfg, stage.level)
    elif cfg.compute.engine == "ray":  # one process, the Ray driver, takes the lock; Ray Train starts the ranks
        nproc = 1

    @asset(**scope.asset_args(name, view))
    def _model_asset(context: AssetExecutionContext, pipes_subprocess_client: PipesSubprocessClient) -> MaterializeResult:
        def shown(hit: bool) -> MaterializeResult:  # what the training process reports, rendered here
            meta = stage.artifact.metadata()
            shown_meta = view.metadata(cfg, plan, stage, meta, context.log)
            return result(stage, meta, hit, {**shown_meta, **loss_picture(stage)})

        if stage.artifact.is_complete() and not stage.artifact.damage():
            return shown(hit=True)
        # The training process takes the fingerprint's lock itself (and sets a damaged model aside); under
        # torchrun this process holds it instead, since the ranks must not wait on one another.
        with stage.artifact.lock(context.log.info) if nproc > 1 else nullcontext():
            if nproc > 1 and stage.artifact.reusable(context.log.info):
                return shown(hit=True)
            # The process logs its loss as it falls and reports the materialization: its cache flag ('hit' when
            # another run trained the model meanwhile) and the same view as above, read from the artifact.
            if on_k8s:
                # The image's python, not this process's: the pod runs the image, whatever runs this launcher.
                command = train_command(cfg, plan, stage.level, python="python", nproc=nproc)
                results = k8s_train_launch(context, cfg, plan, stage.level, command)
            else:
                results = pipes_subprocess_client.run(command=train_command(cfg, plan, stage.level, nproc=nproc),
                                                      context=context).get_results()
        if not results:
            return shown(hit=False)
        return results[0]._replace(metadata={**(results[0].metadata or {}), **loss_picture(stage)})

    return _model_asset


# The model asset's pod (under k8s) only launches the training pod and streams its logs; the training pod holds the
# GPUs (a GPU here as well would sit idle and could keep the training pod from being scheduled at all).
MODELS = View(group=None, kinds=("pytorch", "safetensors"), resources=LIGHT, describe=_describe, metadata=_model,
              make_asset=level_model_asset)
