"""How the latent hierarchy's assets look: images, a VAE level 0's latents, encoder features, the SVD basis and
each level's latents."""
from __future__ import annotations

import numpy as np
from dagster import MetadataValue

from pipeline.ingest import MANIFEST
from pipeline.level_kinds import level_kind
from pipeline.levels import kl_capacity_bits
from pipeline.plots import latent_preview

from .factory import View, md_table, png_markdown
from .k8s import CPU, GPU, LIGHT


def _images(cfg, plan, stage, meta, log) -> dict:
    for name in meta["skipped"]:
        log.warning(f"skipped unreadable image {name}")
    return {"num_images": meta["num_images"], "num_train": meta["num_train"], "num_holdout": meta["num_holdout"],
            "num_skipped": meta["num_skipped"], "skipped": MetadataValue.json(meta["skipped"]),
            "labels": md_table(("label", "images"), sorted(meta["label_counts"].items())),
            "manifest": MetadataValue.path(str(stage.path / MANIFEST)),
            # artifacts built before parallel ingest lack these: shown where recorded
            **{k: meta[k] for k in ("pngs_per_image", "ingest_workers", "images_per_second") if k in meta}}


IMAGES = View(
    group="data", kinds=("webdataset", "parquet"), resources=LIGHT,
    describe=lambda cfg, stage: f"Ingested '{cfg.dataset.source}' images as WebDataset shards + a Parquet manifest "
                                f"({cfg.dataset.resolution} px for level 0, {cfg.dataset.source_size} px for the encoder).",
    metadata=_images)


def _features(cfg, plan, stage, meta, log) -> dict:
    return {"shape": MetadataValue.json(meta["shape"]), "encoder": meta["encoder"], "layer": meta["layer"],
            "input_size": meta["input_size"], "checkpoint_sha256": str(meta["checkpoint_sha256"]),
            "MB_on_disk": round(meta["bytes_on_disk"] / 2**20, 2)}


FEATURES = View(
    group="features", kinds=("timm", "zarr"), resources=GPU,
    describe=lambda cfg, stage: f"Frozen {cfg.encoder.name} features (layer {cfg.encoder.layer}, "
                                f"{cfg.encoder.input_size} px) in a chunked Zarr array.",
    metadata=_features)


def _basis(cfg, plan, stage, meta, log) -> dict:
    return {"channels": meta["channels"], "num_samples": meta["num_samples"],
            "cumulative_explained_variance": MetadataValue.json(meta["cumulative_explained_variance"]),
            "explained_variance": png_markdown(stage.path / meta["plot"], "explained variance")}


SVD = View(
    group="features", kinds=("numpy", "safetensors"), resources=CPU,
    describe=lambda cfg, stage: "SVD basis (mean, components, singular values) of the training features' channels.",
    metadata=_basis)


def _latents(cfg, plan, stage, meta, log) -> dict:
    lv = cfg.level(stage.level)
    bits = kl_capacity_bits(np.asarray(meta["second_moment"]), lv.sigma, lv.pool * lv.pool)
    return {
        "shape": MetadataValue.json(meta["shape"]), "dims": lv.pool * lv.pool * lv.channels,
        "variance_kept": meta["variance_kept"], "sigma": lv.sigma,
        "kl_capacity_bits_per_image": bits if np.isfinite(bits) else "inf (sigma = 0: no bottleneck)",
        "num_train": meta["counts"]["train"], "num_holdout": meta["counts"]["holdout"],
        "train_channel_std_range": MetadataValue.json([round(meta["train_channel_std_min"], 4),
                                                       round(meta["train_channel_std_max"], 4)]),
        "preview": png_markdown(latent_preview(stage.path, plan["images"].path), f"level {stage.level} latents"),
        "preview_layout": "top row: the first held-out images (titled by id); below each, its latent's three leading "
                          "SVD channels as RGB (+-2.5 std)",
        "made_from": MetadataValue.md(level_kind(cfg, stage.level).made_from(cfg, plan, stage.level)),
    }


LATENTS = View(group=None, kinds=("numpy", "webdataset"), resources=CPU, metadata=_latents,
               describe=lambda cfg, stage: level_kind(cfg, stage.level).describe(cfg, stage.level))


def _vae_latents(cfg, plan, stage, meta, log) -> dict:
    return {"shape": MetadataValue.json(meta["shape"]), "vae": meta["vae"], "vae_scale": meta["vae_scale"],
            "stored_dtype": meta["stored_dtype"], "float16_max_abs_error": meta["float16_max_abs_error"],
            "num_train": meta["counts"]["train"], "num_holdout": meta["counts"]["holdout"],
            # vae_scale is meant to bring the latents near unit std: far from it, the noise schedule is off
            "train_channel_std": MetadataValue.json(meta["train_channel_std"]),
            "train_channel_mean": MetadataValue.json(meta["train_channel_mean"]),
            "device": meta["device"], "precision": meta["precision"], "images_per_s": meta["images_per_s"]}


VAE_LATENTS = View(group=None, kinds=("diffusers", "webdataset"), resources=GPU, metadata=_vae_latents,
                   describe=lambda cfg, stage: level_kind(cfg, 0).describe(cfg))
