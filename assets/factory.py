"""Dagster assets over the stage functions of ``pipeline/``: one factory, and the View each kind of stage declares
(assets/views.py lists them).

An asset looks up its fingerprinted artifact; if it is complete the work is skipped (a cache hit, same data
version), otherwise its stage function builds it atomically (``pipeline.stages.materialize``). The stage's
config hash is the asset's ``code_version`` so the UI marks it stale after a config edit; the fingerprint is
its data version; its upstream assets are the stages its fingerprint is made from. What differs between assets
is only how they look and where they run: their View.
"""

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, DataVersion, MaterializeResult, MetadataValue, asset

from pipeline.cache import human_bytes
from pipeline.schema import Config
from pipeline.stage import Stage
from pipeline.stages import materialize


@dataclass(frozen=True)
class Scope:
    """One experiment (the base config or a sweep variant) as its asset factories see it.

    `keys` maps each stage of the plan to its asset key: a stage whose fingerprint an earlier experiment already
    has maps to that experiment's asset, so variants depend on the shared features, SVD and latents in the graph.
    """
    cfg: Config
    plan: dict[str, Stage]
    keys: dict[str, AssetKey]
    home: Path
    variant: str | None = None

    def asset_args(self, name: str, view: "View") -> dict:
        stage = self.plan[name]
        tags = {"stage": stage.kind, **({"level": str(stage.level)} if stage.level is not None else {})}
        if self.variant:
            tags["variant"] = self.variant
        group = view.group or f"level_{stage.level}"
        return dict(key=self.keys[name], code_version=stage.code_version, deps=[self.keys[d] for d in stage.inputs],
                    group_name=f"variant_{self.variant}" if self.variant else group, tags=tags, kinds=set(view.kinds),
                    description=view.describe(self.cfg, stage))


@dataclass(frozen=True)
class View:
    """How one kind of stage shows in the graph and the UI, and where its asset runs."""
    group: str | None  # None: the stage's level group, level_<l>
    kinds: tuple[str, ...]
    describe: Callable[[Config, Stage], str]
    # (cfg, plan, stage, artifact metadata, logger) -> what the asset shows besides cache, fingerprint and path
    metadata: Callable[[Config, dict[str, Stage], Stage, dict, Any], dict]
    # The container resources of its step pod under compute.engine k8s (assets/k8s.py's LIGHT, CPU, GPU)
    resources: dict
    keywords: Callable[[Scope], dict] = field(default=lambda scope: {})  # extra arguments of the stage function
    # (scope, name, view) -> its asset; None: `stage_asset`, the stage function in the step's process. A kind whose
    # asset runs its work in a process of its own (training) runs side by side in the parallel job.
    make_asset: Callable[[Scope, str, "View"], AssetsDefinition] | None = None
    in_variants: bool = True  # False: a sweep variant gets no asset of its own (it would show what the base shows)


def shown_metadata(stage: Stage, meta: dict, hit: bool, extra: dict) -> dict:
    """What every asset shows (the training process reports it too): cache hit or miss, fingerprint, path, size
    (from the marker's record of its files: no walk), then the kind's own entries."""
    size = stage.artifact.bytes_on_disk(meta)
    return {"cache": "hit" if hit else "miss", "fingerprint": stage.fingerprint,
            "path": MetadataValue.path(str(stage.path)), "bytes_on_disk": size, "size_on_disk": human_bytes(size),
            "build_seconds": meta.get("seconds", 0.0),
            **{k: v for k, v in extra.items() if v is not None}}  # e.g. no oracle FID for L = 1


def result(stage: Stage, meta: dict, hit: bool, extra: dict) -> MaterializeResult:
    return MaterializeResult(metadata=shown_metadata(stage, meta, hit, extra), data_version=DataVersion(stage.fingerprint))


def stage_asset(scope: Scope, name: str, view: View) -> AssetsDefinition:
    """The asset of plan[name]: its stage function run in this process, shown through `view`."""
    cfg, plan, stage = scope.cfg, scope.plan, scope.plan[name]

    @asset(**scope.asset_args(name, view))
    def _asset(context: AssetExecutionContext) -> MaterializeResult:
        meta, hit = materialize(cfg, plan, name, context.log.info, **view.keywords(scope))
        return result(stage, meta, hit, view.metadata(cfg, plan, stage, meta, context.log))

    return _asset


def png_markdown(png: Path | bytes, alt: str) -> MetadataValue:
    data = base64.b64encode(png if isinstance(png, bytes) else png.read_bytes()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def md_table(header: tuple[str, ...], rows) -> MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return MetadataValue.md("\n".join(lines))
