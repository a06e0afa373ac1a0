"""Thin Dagster assets over the plain stage functions of ``pipeline/``.

Each asset looks up its fingerprinted artifact; if it is complete the work is skipped (a cache hit, same data
version), otherwise the stage function builds it atomically. The stage's config hash is the asset's
``code_version`` so the UI marks it stale after a config edit; the fingerprint is its data version.
"""

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from dagster import (AssetExecutionContext, AssetKey, AssetsDefinition, DataVersion, MaterializeResult, MetadataValue,
                     asset)

from pipeline.config import Config
from pipeline.plan import Stage


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

    def asset_args(self, name: str, group: str, deps=(), kinds=(), level: int | None = None, **kw) -> dict:
        tags = {"stage": self.plan[name].artifact.stage, **({"level": str(level)} if level is not None else {})}
        if self.variant:
            tags["variant"] = self.variant
        return dict(key=self.keys[name], code_version=self.plan[name].code_version, deps=[self.keys[d] for d in deps],
                    group_name=f"variant_{self.variant}" if self.variant else group, tags=tags, kinds=set(kinds), **kw)


def materialize_stage(context: AssetExecutionContext, stage: Stage, build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """Run `build(tmp_dir) -> metadata` unless the artifact is complete and intact; returns (metadata, cache_hit)."""
    return stage.artifact.materialize(build, context.log.info)


def result(stage: Stage, meta: dict, hit: bool, extra: dict) -> MaterializeResult:
    return MaterializeResult(
        metadata={"cache": "hit" if hit else "miss", "fingerprint": stage.fingerprint,
                  "path": MetadataValue.path(str(stage.path)), "build_seconds": meta.get("seconds", 0.0),
                  **{k: v for k, v in extra.items() if v is not None}},  # e.g. no oracle FID for L = 1
        data_version=DataVersion(stage.fingerprint),
    )


def png_markdown(png: Path | bytes, alt: str) -> MetadataValue:
    data = base64.b64encode(png if isinstance(png, bytes) else png.read_bytes()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def md_table(header: tuple[str, ...], rows) -> MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return MetadataValue.md("\n".join(lines))


def images_asset(scope: Scope) -> AssetsDefinition:
    cfg, stage = scope.cfg, scope.plan["images"]

    @asset(**scope.asset_args("images", "data", kinds=("webdataset", "parquet")),
           description=f"Ingested '{cfg.dataset.source}' images as WebDataset shards + a Parquet manifest "
                       f"({cfg.dataset.resolution} px for level 0, {cfg.dataset.source_size} px for the encoder).")
    def _images(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.ingest import ingest

        meta, hit = materialize_stage(context, stage, lambda out: ingest(cfg.dataset, out, cfg.seed, context.log.info))
        for name in meta["skipped"]:
            context.log.warning(f"skipped unreadable image {name}")
        return result(stage, meta, hit, {
            "num_images": meta["num_images"], "num_train": meta["num_train"], "num_holdout": meta["num_holdout"],
            "num_skipped": meta["num_skipped"], "skipped": MetadataValue.json(meta["skipped"]),
            "labels": md_table(("label", "images"), sorted(meta["label_counts"].items())),
            "manifest": MetadataValue.path(str(stage.path / "manifest.parquet")),
        })

    return _images


def features_asset(scope: Scope) -> AssetsDefinition:
    stage, images = scope.plan["encoder_features"], scope.plan["images"]
    enc = scope.cfg.encoder

    @asset(**scope.asset_args("encoder_features", "features", deps=["images"], kinds=("timm", "zarr")),
           description=f"Frozen {enc.name} features (layer {enc.layer}, {enc.input_size} px) in a chunked Zarr array.")
    def _features(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.features import extract_features

        images_dir = images.artifact.require()
        meta, hit = materialize_stage(context, stage, lambda out: extract_features(enc, images_dir, out, log=context.log.info))
        return result(stage, meta, hit, {
            "shape": MetadataValue.json(meta["shape"]), "encoder": meta["encoder"], "layer": meta["layer"],
            "input_size": meta["input_size"], "checkpoint_sha256": str(meta["checkpoint_sha256"]),
            "MB_on_disk": round(meta["bytes_on_disk"] / 2**20, 2),
        })

    return _features


def svd_asset(scope: Scope) -> AssetsDefinition:
    stage, features, images = scope.plan["svd_basis"], scope.plan["encoder_features"], scope.plan["images"]

    @asset(**scope.asset_args("svd_basis", "features", deps=["encoder_features"], kinds=("numpy", "safetensors")),
           description="SVD basis (mean, components, singular values) of the training features' channels.")
    def _svd(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.features import open_features
        from pipeline.ingest import read_manifest
        from pipeline.svd import fit_svd

        def build(out: Path) -> dict:
            splits = np.asarray(read_manifest(images.artifact.require()).column("split").to_pylist())
            return fit_svd(open_features(features.artifact.require()), np.flatnonzero(splits == "train"), out)

        meta, hit = materialize_stage(context, stage, build)
        return result(stage, meta, hit, {
            "channels": meta["channels"], "num_samples": meta["num_samples"],
            "cumulative_explained_variance": MetadataValue.json(meta["cumulative_explained_variance"]),
            "explained_variance": png_markdown(stage.path / meta["plot"], "explained variance"),
        })

    return _svd


def level_latents_asset(scope: Scope, level: int) -> AssetsDefinition:
    cfg, plan, name = scope.cfg, scope.plan, f"level_{level}_latents"
    stage, features, svd, images = plan[name], plan["encoder_features"], plan["svd_basis"], plan["images"]
    lv = cfg.levels[level - 1]

    @asset(**scope.asset_args(name, f"level_{level}", deps=["encoder_features", "svd_basis"], level=level,
                              kinds=("numpy", "webdataset")),
           description=f"Level {level} latents: features pooled to {lv.pool}x{lv.pool}, top {lv.channels} SVD "
                       f"channels, standardized; WebDataset shards keyed by manifest id.")
    def _latents(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.features import open_features
        from pipeline.ingest import read_manifest
        from pipeline.levels import build_latents, kl_capacity_bits
        from pipeline.plots import latent_preview
        from pipeline.svd import load_basis

        def build(out: Path) -> dict:
            m = read_manifest(images.artifact.require())
            return build_latents(open_features(features.artifact.require()), load_basis(svd.artifact.require()),
                                 m.column("id").to_pylist(), m.column("label").to_pylist(),
                                 m.column("split").to_pylist(), lv.pool, lv.channels, cfg.dataset.shard_size, out)

        meta, hit = materialize_stage(context, stage, build)
        bits = kl_capacity_bits(np.asarray(meta["second_moment"]), lv.sigma, lv.pool * lv.pool)
        return result(stage, meta, hit, {
            "shape": MetadataValue.json(meta["shape"]), "dims": lv.pool * lv.pool * lv.channels,
            "variance_kept": meta["variance_kept"], "sigma": lv.sigma,
            "kl_capacity_bits_per_image": bits if np.isfinite(bits) else "inf (sigma = 0: no bottleneck)",
            "num_train": meta["counts"]["train"], "num_holdout": meta["counts"]["holdout"],
            "train_channel_std_range": MetadataValue.json([round(meta["train_channel_std_min"], 4),
                                                           round(meta["train_channel_std_max"], 4)]),
            "preview": png_markdown(latent_preview(stage.path, images.path), f"level {level} latents"),
            "made_from": MetadataValue.md(
                f"{cfg.encoder.name} `{cfg.encoder.layer}` at {cfg.encoder.input_size} px "
                f"(features `{features.fingerprint}`), pooled to {lv.pool}x{lv.pool}, top {lv.channels} SVD channels "
                f"(basis `{svd.fingerprint}`), standardized per channel on the training split"),
        })

    return _latents

