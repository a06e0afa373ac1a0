"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here.

The experiment comes from $NESTED_CONFIG (default configs/emoji.yaml) and artifacts go under $NESTED_HOME
(default .nested/). A config with an invalid value fails here, at load, naming the field.

A config's `variants` (a sweep) become assets under a key prefix, `<variant>/...`, but only for the stages
whose fingerprint differs from every earlier experiment's: a sigma variant gets its own models, samples and
evaluation and depends on the base experiment's features, SVD and latents in the graph, as it does on disk.
"""
from __future__ import annotations

from pathlib import Path

from dagster import (AssetKey, AssetSelection, DagsterInstance, Definitions, PipesSubprocessClient, define_asset_job,
                     in_process_executor, multiprocess_executor)

from pipeline.config import load_config, nested_home, parse_config, variant_configs
from pipeline.plan import build_plan
from pipeline.schema import Config

from .checks import asset_checks
from .factory import Scope, stage_asset
from .k8s import executor_for
from .views import view_of


def experiment_scope(cfg: Config, home: Path, variant: str | None, owner: dict[str, AssetKey]) -> tuple[Scope, list[str]]:
    """The experiment's scope and the names of the stages it owns (`owner`: fingerprint -> key, updated)."""
    plan = build_plan(cfg, home)
    keys, own = {}, []
    for name, stage in plan.items():
        if variant and not view_of(stage.kind).in_variants:
            continue
        if stage.fingerprint not in owner:
            owner[stage.fingerprint] = AssetKey([variant, name] if variant else [name])
            own.append(name)
        keys[name] = owner[stage.fingerprint]
    return Scope(cfg, plan, keys, home, variant), own


def make_asset(scope: Scope, name: str):
    view = view_of(scope.plan[name].kind)
    return (view.make_asset or stage_asset)(scope, name, view)


def build_definitions(cfg: Config | None = None, home: Path | None = None) -> Definitions:
    cfg = cfg or load_config()
    home = Path(home) if home else nested_home()
    owner: dict[str, AssetKey] = {}
    assets, checks, owned_by, apart, resources = [], [], {}, [], {}
    for variant, vcfg in [(None, cfg), *variant_configs(cfg, check_files=False).items()]:
        scope, own = experiment_scope(vcfg, home, variant, owner)
        for name in own:
            view = view_of(scope.plan[name].kind)
            made = make_asset(scope, name)
            assets.append(made)
            resources[made.op.name] = view.resources
            if view.make_asset is not None:  # its work runs in a process of its own: side by side in a job
                apart.append(made.key)
        checks += asset_checks(scope, own)
        owned_by[variant] = [scope.keys[name] for name in own]
    variant_keys = [k for v, keys in owned_by.items() if v for k in keys]
    jobs = [
        define_asset_job("all_assets", AssetSelection.all(), description=f"Every asset of '{cfg.name}' and its variants."),
        define_asset_job("experiment", AssetSelection.assets(*owned_by[None]),
                         description=f"The assets of '{cfg.name}' itself, without its variants."),
        # Levels train on latents, not on each other's models: one process per level, side by side.
        define_asset_job("train_levels_in_parallel", AssetSelection.assets(*apart),
                         executor_def=executor_for(cfg, resources, multiprocess_executor),
                         description="Every level's model at once (each its own Pipes subprocess)."),
    ]
    if variant_keys:  # the variants' own assets; what they share with the base is read as a cache hit
        jobs.append(define_asset_job("sweep", AssetSelection.assets(*variant_keys).upstream(),
                                     description=f"The variants {', '.join(cfg.variants)} of '{cfg.name}'."))
    return Definitions(
        assets=assets, asset_checks=checks, jobs=jobs,
        resources={"pipes_subprocess_client": PipesSubprocessClient()},
        # Stages are few and coarse and each uses every core itself: in-process avoids a subprocess per step.
        # Under compute.engine k8s, every asset in a pod of its own, sized by its stage (assets/k8s.py).
        executor=executor_for(cfg, resources, in_process_executor),
    )


def materialize_variants(cfg: Config, home: Path, variants: dict[str, dict], instance: DagsterInstance | None = None):
    """`variants` (sweep overrides of `cfg`, replacing its own) materialized up to their evaluations through these
    definitions, into `instance` (default: an ephemeral one): what a variant shares with `cfg` is its asset, read
    as a cache hit or built once. (each variant's config, the run's result)."""
    sweep = parse_config({**cfg.model_dump(mode="json", exclude={"variants"}), "variants": variants}, check_files=False)
    configs = variant_configs(sweep, check_files=False)
    # Each variant's evaluation as build_definitions keys it: one equal to the base's (or an earlier variant's) is
    # that owner's asset, the variant owning none of its own.
    owner: dict[str, AssetKey] = {}
    scopes = {name: experiment_scope(vcfg, home, name, owner)[0] for name, vcfg in [(None, sweep), *configs.items()]}
    keys = {scopes[name].keys["evaluation"] for name in configs}
    defs = Definitions.merge(build_definitions(sweep, home),
                             Definitions(jobs=[define_asset_job("variants", AssetSelection.assets(*keys).upstream())]))
    result = defs.resolve_job_def("variants").execute_in_process(instance=instance or DagsterInstance.ephemeral())
    return configs, result


defs = build_definitions()
