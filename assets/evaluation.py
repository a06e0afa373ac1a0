"""Generation (and, next, evaluation) assets: they read the trained models and never retrain them."""
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from .stages import Scope, materialize_stage, md_table, png_markdown, result


def samples_asset(scope: Scope) -> AssetsDefinition:
    cfg, plan = scope.cfg, scope.plan
    stage = plan["samples"]
    sc = cfg.sampling
    models = [f"level_{level}_model" for level in range(cfg.num_levels)]

    @asset(**scope.asset_args("samples", "generation", deps=models, kinds=("pytorch", "webdataset")),
           description=f"{sc.num_samples} images sampled top-down ({sc.sampler}, {sc.steps} steps, guidance "
                       f"{cfg.guidance()} from level 0 up), with every level's latents, as WebDataset shards.")
    def _samples(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.sample import generate_samples

        meta, hit = materialize_stage(context, stage, lambda out: generate_samples(cfg, plan, out, context.log.info))
        rows = [(lv, round(s["mean_abs_max"], 3), round(s["std_mean"], 3), round(s["std_min"], 3),
                 round(s["std_max"], 3)) for lv, s in meta["level_stats"].items() if lv != "pixels"]
        extra = {
            "num_samples": meta["num_samples"], "images_per_sec": meta["images_per_sec"],
            "grid": png_markdown(stage.path / "grid.png", "samples"),
            "latent_stats": md_table(("level", "max abs channel mean", "mean channel std", "min std", "max std"), rows),
            "pixel_stats": MetadataValue.json(meta["level_stats"].get("pixels", {})),
            "grid_path": MetadataValue.path(str(stage.path / "grid.png")),
        }
        if "shared_coarse.png" in meta["pictures"]:
            extra["shared_coarse_latent"] = png_markdown(stage.path / "shared_coarse.png", "shared coarse latent")
        return result(stage, meta, hit, extra)

    return _samples


def reference_asset(scope: Scope) -> AssetsDefinition:
    cfg, stage, images = scope.cfg, scope.plan["reference_stats"], scope.plan["images"]

    @asset(**scope.asset_args("reference_stats", "evaluation", deps=["images"], kinds=("pytorch", "safetensors")),
           description="Inception features, mean and covariance of the training images (FID reference, "
                       "precision/recall), and of the held-out images (the real-data FID floor).")
    def _reference(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.evaluate import build_reference

        meta, hit = materialize_stage(context, stage, lambda out: build_reference(
            images.artifact.require(), out, cfg.sampling.reference_images, context.log.info,
            cfg.sampling.inception_weights))
        return result(stage, meta, hit, {"num_reference": meta["num_reference"], "num_holdout": meta["num_holdout"],
                                         "fid_floor": meta["fid_floor"]})

    return _reference


def evaluation_asset(scope: Scope) -> AssetsDefinition:
    cfg, plan = scope.cfg, scope.plan
    stage = plan["evaluation"]

    @asset(**scope.asset_args("evaluation", "evaluation", deps=["samples", "reference_stats"], kinds=("parquet",)),
           description="FID (clean-fid; the packaged Inception or sampling.inception_weights), precision/recall "
                       "(k = 3) and nearest-training-image distances of the samples; FID mean and std over "
                       f"{cfg.sampling.eval_seeds} sampling seed(s); for a nested run the oracle FID (level 0 from "
                       "the held-out images' real coarser latents). Its row, kept in the artifact, is exported to "
                       "$NESTED_HOME/evaluations.parquet.")
    def _evaluation(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.evaluate import evaluate_run
        from pipeline.table import export_table

        def build(out):
            return evaluate_run(cfg, plan, out, context.log.info, scope.variant or "")

        meta, hit = materialize_stage(context, stage, build)
        # The row is part of the artifact; the table is re-exported from the artifacts every time (a cache hit
        # too), so an export that failed last time (a full disk, a kill) is completed now, and never doubled.
        table = export_table(stage.artifact.home)
        context.log.info(f"FID {meta['fid']:.2f}; evaluation table: {table}")
        row = meta["row"]
        return result(stage, meta, hit, {
            "fid": meta["fid"], "fid_mean": row["fid_mean"], "fid_std": row["fid_std"],
            "oracle_fid": row["oracle_fid"], "fid_floor": row["fid_floor"], "precision": meta["precision"],
            "recall": meta["recall"], "nn_distance_mean": meta["nn_distance_mean"],
            "gflops_per_image": round(row["gflops_per_image"], 3),
            "row": md_table(tuple(row), [tuple(v if not isinstance(v, float) else round(v, 4) for v in row.values())]),
            "table": MetadataValue.path(str(table)),
        })

    return _evaluation


def neighbours_asset(scope: Scope) -> AssetsDefinition:
    cfg, plan = scope.cfg, scope.plan
    stage = plan["level_neighbours"]
    latents = [f"level_{level}_latents" for level in range(1, cfg.num_levels)]

    @asset(**scope.asset_args("level_neighbours", "evaluation", deps=["images", *latents], kinds=("faiss",)),
           description="Nearest training images of held-out queries under each level's latents (paper Figure 3): "
                       "coarse levels find semantic neighbours, fine levels visual ones.")
    def _neighbours(context: AssetExecutionContext) -> MaterializeResult:
        from pipeline.neighbours import level_neighbours

        meta, hit = materialize_stage(context, stage, lambda out: level_neighbours(cfg, plan, out))
        return result(stage, meta, hit, {"neighbours": png_markdown(stage.path / "neighbours.png", "neighbours"),
                                         "layout": meta["layout"], "queries": MetadataValue.json(meta["queries"])})

    return _neighbours
