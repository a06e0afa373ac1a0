"""Generation (and, next, evaluation) assets: they read the trained models and never retrain them."""
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from pipeline.config import Config
from pipeline.plan import Stage

from .stages import materialize_stage, md_table, png_markdown, result


def samples_asset(cfg: Config, plan: dict[str, Stage]) -> AssetsDefinition:
    stage = plan["samples"]
    sc = cfg.sampling
    models = [f"level_{level}_model" for level in range(cfg.num_levels)]

    @asset(name=stage.asset, code_version=stage.code_version, group_name="generation", deps=models,
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
            "pixel_mean_std": MetadataValue.json(meta["level_stats"]["pixels"]),
            "grid_path": MetadataValue.path(str(stage.path / "grid.png")),
        }
        if "shared_coarse.png" in meta["pictures"]:
            extra["shared_coarse_latent"] = png_markdown(stage.path / "shared_coarse.png", "shared coarse latent")
        return result(stage, meta, hit, extra)

    return _samples
