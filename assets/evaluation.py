"""How generation and evaluation look: samples, the FID reference, the evaluation, the level neighbours and the
variations of real images.

They read the trained models and never retrain them.
"""
from __future__ import annotations

from dagster import MetadataValue

from pipeline.table import TABLE, export_table

from .factory import View, md_table, png_markdown
from .k8s import CPU, LIGHT


def _samples(cfg, plan, stage, meta, log) -> dict:
    rows = [(lv, round(s["mean_abs_max"], 3), round(s["std_mean"], 3), round(s["std_min"], 3),
             round(s["std_max"], 3)) for lv, s in meta["level_stats"].items() if lv != "pixels"]
    out = {
        "num_samples": meta["num_samples"], "images_per_sec": meta["images_per_sec"],
        "grid": png_markdown(stage.path / "grid.png", "samples"),
        "grid_layout": f"the first {min(64, meta['num_samples'])} samples in order, 8 per row (sampling seed "
                       f"{cfg.sampling.seed})",
        "latent_stats": md_table(("level", "max abs channel mean", "mean channel std", "min std", "max std"), rows),
        "pixel_stats": MetadataValue.json(meta["level_stats"].get("pixels", {})),
        "grid_path": MetadataValue.path(str(stage.path / "grid.png")),
    }
    if "shared_coarse.png" in meta["pictures"]:
        out["shared_coarse_latent"] = png_markdown(stage.path / "shared_coarse.png", "shared coarse latent")
        out["shared_coarse_layout"] = (f"{cfg.sampling.shared_rows} rows; each row shares one sampled coarsest latent "
                                       f"z{cfg.num_levels - 1}, and its 8 images sample every finer level from it "
                                       "(paper Figure 1)")
    return out


def _describe_samples(cfg, stage) -> str:
    sc = cfg.sampling
    return (f"{sc.num_samples} images sampled top-down ({sc.sampler}, {sc.steps} steps, guidance "
            f"{cfg.guidance()} from level 0 up), with every level's latents, as WebDataset shards.")


SAMPLES = View(group="generation", kinds=("pytorch", "webdataset"), resources=CPU, describe=_describe_samples,
               metadata=_samples)

REFERENCE = View(
    group="evaluation", kinds=("pytorch", "safetensors"), resources=CPU,
    describe=lambda cfg, stage: "Inception mean and covariance of the training images, streamed (the FID reference), "
                                f"and a hashed subsample of at most {cfg.sampling.pr_reference:,} of their features "
                                "(precision/recall); the same for the held-out images (the real-data FID floor).",
    metadata=lambda cfg, plan, stage, meta, log: {
        "num_reference": meta["num_reference"], "num_pr_reference": meta.get("num_pr_reference"),
        "num_holdout": meta["num_holdout"], "fid_floor": meta["fid_floor"], "device": meta.get("device"),
        "inception_precision": meta.get("inception_precision")})


def _evaluation(cfg, plan, stage, meta, log) -> dict:
    # The row is part of the artifact; the table is re-exported from the artifacts every time (a cache hit
    # too), so an export that failed last time (a full disk, a kill) is completed now, and never doubled.
    table = export_table(stage.artifact.home)
    log.info(f"FID {meta['fid']:.2f}; evaluation table: {table}")
    row = meta["row"]
    return {
        "fid": meta["fid"], "fid_mean": row["fid_mean"], "fid_std": row["fid_std"],
        "oracle_fid": row["oracle_fid"], "fid_floor": row["fid_floor"], "kid": meta["kid"],
        "precision": meta["precision"], "recall": meta["recall"], "nn_distance_mean": meta["nn_distance_mean"],
        "near_copy_fraction": meta["near_copy_fraction"],
        "gflops_per_image": round(row["gflops_per_image"], 3),
        "row": md_table(tuple(row), [tuple(v if not isinstance(v, float) else round(v, 4) for v in row.values())]),
        "table": MetadataValue.path(str(table)),
    }


def _describe_evaluation(cfg, stage) -> str:
    return ("FID and KID (clean-fid; the packaged Inception or sampling.inception_weights), precision/recall "
            "(k = 3), nearest-training-image distances of the samples and the fraction nearer a training image "
            "than 5% of the held-out images are (memorization); FID mean and std over "
            f"{cfg.sampling.eval_seeds} sampling seed(s); for a nested run the oracle FID (level 0 from "
            "the held-out images' real coarser latents). Its row, kept in the artifact, is exported to "
            f"$NESTED_HOME/{TABLE}.")


EVALUATION = View(group="evaluation", kinds=("parquet",), resources=CPU, describe=_describe_evaluation,
                  metadata=_evaluation,
                  keywords=lambda scope: {"variant": scope.variant or ""})

# A variant's latents are the base's (or a subset): its neighbour picture adds nothing.
NEIGHBOURS = View(
    group="evaluation", kinds=("faiss",), resources=LIGHT, in_variants=False,
    describe=lambda cfg, stage: "Nearest training images of held-out queries under each level's latents (paper "
                                "Figure 3): coarse levels find semantic neighbours, fine levels visual ones.",
    metadata=lambda cfg, plan, stage, meta, log: {
        "neighbours": png_markdown(stage.path / "neighbours.png", "neighbours"), "layout": meta["layout"],
        "queries": MetadataValue.json(meta["queries"])})


def _variations(cfg, plan, stage, meta, log) -> dict:
    rows = [(r["kept"], round(r["cosine_mean"], 4), round(r["cosine_std"], 4)) for r in meta["similarity"]]
    return {
        "variations": png_markdown(stage.path / "variations.png", "variations"), "layout": meta["layout"],
        "kept_similarity": md_table(("kept latents", "encoder cosine to the source (mean)", "std"), rows),
        "sources": MetadataValue.json(meta["sources"]), "variation_ids": meta["variation_ids"],
    }


VARIATIONS = View(
    group="generation", kinds=("pytorch", "numpy"), resources=CPU,
    describe=lambda cfg, stage: (f"{cfg.variations.num_images} held-out images"
                                 f"{' and the images of ' + str(cfg.variations.folder) if cfg.variations.folder else ''}"
                                 " regenerated from their own latents at levels >= l (RCG's variations), for every l "
                                 f"and {cfg.variations.seeds} seeds, with the encoder cosine of what is kept."),
    metadata=_variations)
