"""Every kind of stage, declared once (`STAGE_KINDS`, in the order the plan builds them), and the building of one
stage of a plan in plain Python.

A declaration says which settings and inputs decide a stage's artifacts (its fingerprint), its code version, its
build function and its checks (pipeline/stage.py's `StageKind`). The plan (pipeline/plan.py), the stage runner
below, the asset checks and garbage collection iterate these declarations; the Dagster layer declares, per kind,
how its assets look (assets/views.py). Adding a kind of stage is one entry here and one there.

A build function is ``(cfg, plan, out_dir, log, **where) -> metadata``: it reads its inputs' artifacts through
the plan, writes its own into `out_dir` (a temporary directory, published when it returns) and returns what the
artifact's marker records. `where` is ``level=`` for a per-level stage, ``engine=`` (pipeline/engine.py) for a
kind that spreads its work, and the asset's own keywords (the evaluation's ``variant=``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.weights import checkpoint_sha256, is_local_file

from . import checks
from .cache import file_sha256, stable_hash
from .engine import engine_for
from .evaluate import build_reference, evaluate_run
from .features import build_features
from .fingerprints import without_new_defaults
from .ingest import build_images, source_fingerprint
from .level_kinds import build_level_latents, level_kind
from .level_kinds import model_settings as kind_model_settings
from .neighbours import K, QUERIES, level_neighbours
from .runtime import large_blocks_returned
from .sample import generate_samples
from .schema import EVAL_K, Config
from .stage import Check, Stage, StageKind, one
from .svd import build_basis
from .train import train, train_level
from .variations import build_variations, folder_images


# -- the settings and inputs that decide each kind's artifacts -------------------------------------------------

def dataset_settings(cfg: Config, level=None) -> dict:
    # Where the data lies is not a setting: the source's content hash (an input) identifies it.
    return {"dataset": cfg.dataset.model_dump(mode="json", exclude={"path"}), "seed": cfg.seed}


def encoder_settings(cfg: Config, level=None) -> dict:
    # Nor where a local checkpoint lies: its content hash is the "checkpoint" input ("hub", "none" and
    # "package:..." are names, kept).
    local = is_local_file(cfg.encoder.weights)
    exclude = {"batch_size", "weights"} if local else {"batch_size"}
    return {"encoder": cfg.encoder.model_dump(mode="json", exclude=exclude)}


def latents_settings(cfg: Config, level: int) -> dict:
    """The settings that decide level `level`'s latents (its kind's, level 0's space's; sigma is not one: it only
    acts when z_l conditions)."""
    return level_kind(cfg, level).latent_settings(cfg, level)


def latents_inputs(cfg: Config, plan: dict, level: int, home=None) -> dict:
    """What level `level`'s latents are made from (its kind's, level 0's space's)."""
    return level_kind(cfg, level).latent_inputs(cfg, plan, level)


def model_settings(cfg: Config, level: int) -> dict:
    """What decides level `level`'s denoiser: its training settings and the sigma of each level it is conditioned on
    (level 0: also its space and its target transforms)."""
    own = {"train": cfg.train_config(level).model_dump(mode="json"), "conditioning": cfg.conditioning,
           "class_conditional": cfg.class_conditional, "seed": cfg.training_seed,
           "condition_sigmas": {str(k): cfg.level(k).sigma for k in cfg.conditions_of(level)}}
    return {**own, **kind_model_settings(cfg, level)}


def sampling_settings(cfg: Config) -> dict:
    """What decides how samples are drawn (not how they are scored): the samples' and variations' own settings."""
    evaluation_only = {"reference_images", "pr_reference", "reference_npz", "inception_weights", "eval_seeds", "oracle"}
    sampling = cfg.sampling.model_dump(mode="json", exclude=evaluation_only)
    return without_new_defaults({"sampling": sampling})["sampling"]


def inception_identity(cfg: Config) -> str:
    """What the FID features are computed with: the content hash of the configured file, else the packaged copy."""
    path = cfg.sampling.inception_weights
    if path is None:
        return "packaged"
    if not path.is_file():  # checkpoint_sha256 would call it an encoder checkpoint
        raise FileNotFoundError(f"sampling.inception_weights: file not found: {path}")
    return checkpoint_sha256(str(path))


def reference_npz_identity(cfg: Config) -> str:
    """Where the FID statistics come from: "training images", or the content hash of sampling.reference_npz."""
    path = cfg.sampling.reference_npz
    if path is None:
        return "training images"
    if not path.is_file():
        raise FileNotFoundError(f"sampling.reference_npz: file not found: {path}")
    return checkpoint_sha256(str(path))


def reference_settings(cfg: Config, level=None) -> dict:
    sc = cfg.sampling
    return {"max_images": sc.reference_images, "inception": inception_identity(cfg), "pr_reference": sc.pr_reference,
            "statistics": reference_npz_identity(cfg)}


def folder_identity(folder: Path | None) -> str:
    """Content hash of the images of `variations.folder` (their names and bytes), "none" without one."""
    if folder is None:
        return "none"
    return stable_hash({p.name: file_sha256(p) for p in folder_images(folder)})


def latents(cfg: Config, plan: dict, levels) -> dict:
    return {f"level_{level}": plan[f"level_{level}_latents"] for level in levels}


def semantic_levels(cfg: Config) -> range:
    return range(1, cfg.num_levels)


LENGTH_ONLY = ("steps", "checkpoint_every", "log_every")  # a run's length and its bookkeeping: not its trajectory


def model_trajectory(own: dict) -> dict:
    """A model's settings without its length: runs equal in these draw the same steps (pipeline/train.py: the
    batches, noise and learning rate of a step depend on the step alone), so a shorter one is a longer one's prefix."""
    return {**own, "train": {k: v for k, v in own["train"].items() if k not in LENGTH_ONLY}}


def model_inputs(cfg: Config, plan: dict, level: int) -> dict:
    target = (level_kind(cfg, 0).latents_stage or "images") if level == 0 else f"level_{level}_latents"
    return {"target": plan[target],
            "conditions": {k: plan[f"level_{k}_latents"] for k in cfg.conditions_of(level)}}


# -- the declarations -------------------------------------------------------------------------------------------

def _require(plan: dict, name: str) -> Path:
    return plan[name].artifact.require()


# Every latents artifact (level 0's and the levels above) is zipped with the others by position: its keys must be
# the manifest's splits, in order.
LATENT_SHARDS_MATCH = Check("shards_match_manifest", "Train and holdout latent shards hold exactly the manifest's "
                            "splits.", lambda cfg, plan, st: checks.latents_match_manifest(st.artifact.require(),
                                                                                           _require(plan, "images")))

STAGE_KINDS: tuple[StageKind, ...] = (
    StageKind(
        name="images", code_version="1", stages=one("images"), settings=dataset_settings,
        inputs=lambda cfg, plan, level, home: {"source": source_fingerprint(cfg.dataset, cache_dir=home)},
        build=build_images,
        checks=(Check("shards_match_manifest", "Every manifest row is in the image shards, and nothing else.",
                      lambda cfg, plan, st: checks.images_match_manifest(st.artifact.require())),)),
    # Level 0's own latents, where its space has them (a VAE's): encoded once, read by everything after.
    StageKind(
        name="vae_latents", code_version="1",
        stages=lambda cfg: [(name, 0)] if (name := level_kind(cfg, 0).latents_stage) else [],
        settings=latents_settings,
        inputs=latents_inputs, build=build_level_latents,
        checks=(Check("consistent", "Latents are finite and their training statistics are those stored when built.",
                      lambda cfg, plan, st: checks.vae_latents_are_consistent(st.artifact.require())),
                LATENT_SHARDS_MATCH)),
    StageKind(
        name="features", code_version="1", stages=one("encoder_features"), settings=encoder_settings,
        inputs=lambda cfg, plan, level, home: {"images": plan["images"],
                                               "checkpoint": checkpoint_sha256(cfg.encoder.weights)},
        build=build_features, uses_engine=True,
        checks=(Check("finite", "Every feature is finite and there is one feature map per manifest row.",
                      lambda cfg, plan, st: checks.features_are_finite(st.artifact.require(),
                                                                      _require(plan, "images"))),)),
    StageKind(
        name="svd", code_version="1", stages=one("svd"), settings=lambda cfg, level: {},
        inputs=lambda cfg, plan, level, home: {"features": plan["encoder_features"]},
        build=build_basis,
        checks=(Check("orthonormal", "The basis loads, is finite, orthonormal, one axis per feature channel, variances "
                      "descending.", lambda cfg, plan, st: checks.basis_is_orthonormal(
                          st.artifact.require(), plan["encoder_features"].artifact.metadata()["shape"][-1])),)),
    StageKind(
        name="latents", code_version="1",
        stages=lambda cfg: [(f"level_{level}_latents", level) for level in semantic_levels(cfg)],
        settings=latents_settings,
        inputs=latents_inputs, build=build_level_latents,
        checks=(Check("standardized", "Latents are finite; each training channel has mean ~0 and std ~1.",
                      lambda cfg, plan, st: checks.latents_are_standardized(st.artifact.require())),
                LATENT_SHARDS_MATCH)),
    StageKind(
        name="models", code_version="2",
        stages=lambda cfg: [(f"level_{level}_model", level) for level in range(cfg.num_levels)],
        settings=model_settings, inputs=lambda cfg, plan, level, home: model_inputs(cfg, plan, level),
        build=train, materialize=train_level,  # its own driver: torchrun's ranks, an engine's group, its checkpoints
        trajectory=model_trajectory,
        checks=(Check("checkpoint_loads", "The checkpoint loads and one denoising forward is finite and well shaped.",
                      lambda cfg, plan, st: checks.checkpoint_loads(cfg, plan, st.level)),)),
    StageKind(
        name="samples", code_version="1", stages=one("samples"),
        settings=lambda cfg, level: {"sampling": sampling_settings(cfg), "guidance": cfg.guidance()},
        inputs=lambda cfg, plan, level, home: {f"level_{lv}": plan[f"level_{lv}_model"]
                                               for lv in range(cfg.num_levels)},
        build=generate_samples, uses_engine=True,
        checks=(Check("complete", "All requested samples are in the shards and decode; their latents are finite.",
                      lambda cfg, plan, st: checks.samples_are_complete(st.artifact.require(),
                                                                       cfg.sampling.num_samples)),)),
    # The FID reference, its Inception file, the extra seeds and the oracle are the evaluation's business.
    # 2: streamed float64 statistics, capped subsamples (sampling.pr_reference), or an ADM-style .npz's statistics.
    StageKind(
        name="reference", code_version="2", stages=one("reference_stats"), settings=reference_settings,
        inputs=lambda cfg, plan, level, home: {"images": plan["images"]},
        build=build_reference,
        checks=(Check("consistent", "FID statistics finite, sigma symmetric and positive semi-definite; min(cap, N) "
                      "finite reference and held-out features kept, whose mean agrees with mu.",
                      lambda cfg, plan, st: checks.reference_is_consistent(
                          st.artifact.require(), st.artifact.metadata()["num_reference"],
                          st.artifact.metadata()["num_holdout"], cfg.sampling.pr_reference,
                          st.artifact.metadata()["pr_source"])),)),
    # 3: the FID against the reference's stored statistics; precision/recall against its subsample.
    StageKind(
        name="evaluation", code_version="3", stages=one("evaluation"),
        settings=lambda cfg, level: {"k": EVAL_K, "eval_seeds": cfg.sampling.eval_seeds,
                                     "oracle": cfg.sampling.oracle and cfg.num_levels > 1},
        inputs=lambda cfg, plan, level, home: {"samples": plan["samples"], "reference": plan["reference_stats"]},
        build=evaluate_run, uses_engine=True,
        checks=(Check("row_present", "The evaluation table has this evaluation's row, with a finite FID.",
                      lambda cfg, plan, st: checks.evaluation_row_present(st.artifact.home, st.fingerprint)),)),
    StageKind(
        name="neighbours", code_version="2", stages=one("level_neighbours"),
        settings=lambda cfg, level: {"queries": QUERIES, "k": K},
        inputs=lambda cfg, plan, level, home: {"images": plan["images"], **latents(cfg, plan, semantic_levels(cfg))},
        build=level_neighbours,
        checks=(Check("complete", "k neighbours of every query under every level, and the picture decodes.",
                      lambda cfg, plan, st: checks.neighbours_complete(st.artifact.require(), cfg.num_levels,
                                                                      st.artifact.metadata()["k"])),)),
    StageKind(
        # Nothing to keep in a plain diffusion model: no variations for L = 1.
        name="variations", code_version="1", stages=lambda cfg: [("variations", None)] if cfg.num_levels > 1 else [],
        settings=lambda cfg, level: {"variations": cfg.variations.model_dump(mode="json", exclude={"folder"}),
                                     "sampling": sampling_settings(cfg), "guidance": cfg.guidance()},
        inputs=lambda cfg, plan, level, home: {
            "folder": folder_identity(cfg.variations.folder), "svd": plan["svd"],
            **{f"latents_{lv}": plan[f"level_{lv}_latents"] for lv in semantic_levels(cfg)},
            **{f"model_{lv}": plan[f"level_{lv}_model"] for lv in range(cfg.num_levels)}},
        build=build_variations,
        checks=(Check("keeps_its_sources", "The kept levels of every variation are its source's own latents; all "
                      "finite.", lambda cfg, plan, st: checks.variations_keep_their_sources(
                          st.artifact.require(), {lv: _require(plan, f"level_{lv}_latents")
                                                  for lv in semantic_levels(cfg)})),)),
)
KINDS = {kind.name: kind for kind in STAGE_KINDS}
# Every artifact's own check, besides its kind's.
FILES_INTACT = Check("files_intact", "Every file is there with the size and SHA-256 its marker recorded when it was "
                     "built.", lambda cfg, plan, st: checks.files_intact(st.artifact))


def build(cfg: Config, plan: dict[str, Stage], name: str, out_dir: Path, log: Callable[[str], None] = print,
          engine=None, **keywords) -> dict:
    """Run plan[name]'s build function into out_dir (`engine`: default the config's)."""
    stage = plan[name]
    kind = KINDS[stage.kind]
    where = {} if stage.level is None else {"level": stage.level}
    if kind.uses_engine:
        where["engine"] = engine or engine_for(cfg)
    return kind.build(cfg, plan, out_dir, log, **where, **keywords)


def materialize(cfg: Config, plan: dict[str, Stage], name: str, log: Callable[[str], None] = print,
                **keywords) -> tuple[dict, bool]:
    """Build plan[name] unless an intact artifact exists; (its metadata, whether it was a cache hit)."""
    stage = plan[name]
    kind = KINDS[stage.kind]
    if kind.materialize is not None:
        meta = kind.materialize(cfg, plan, stage.level, log, engine_for(cfg))
        return meta, meta["cache"] == "hit"
    # A streaming stage's memory stays flat however long it streams (training, above, keeps glibc's own thresholds).
    with large_blocks_returned():
        return stage.artifact.materialize(lambda out: build(cfg, plan, name, out, log, **keywords), log)
