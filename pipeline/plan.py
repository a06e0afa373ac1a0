"""Where every artifact of an experiment lives, derived from the config alone.

A stage's fingerprint hashes its own config fields, its inputs' fingerprints and its code version, so two
experiments that differ only in L or sigma share features, SVD and latents, and an edit to one level's shape
moves only that level's latents. ``code_version`` (the asset's code version) hashes the stage's own fields and its
inputs' code versions: the config lineage without the data. After a config edit the UI thus marks stale exactly
the assets whose fingerprints moved; the UI's own staleness reaches a child only once its parent is rerun.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cache import Artifact, stable_hash
from .config import EVAL_K, Config

# Bump a stage's entry when a change of its code changes what it writes: its artifacts (and everything
# downstream) get new fingerprints and are rebuilt; old ones stay on disk until removed.
CODE_VERSION = {"images": "1", "features": "1", "svd": "1", "latents": "1", "models": "2", "samples": "1", "reference": "1",
                "evaluation": "2", "neighbours": "2", "variations": "1"}


@dataclass(frozen=True)
class Stage:
    asset: str  # the asset's name in the graph (e.g. encoder_features; its artifacts lie under the kind, features/)
    artifact: Artifact
    code_version: str  # hash of the stage's own settings + code version
    level: int | None = None  # the level a latents or model stage belongs to; None for level-free stages

    @property
    def kind(self) -> str:
        """What the stage builds: a key of CODE_VERSION and pipeline.stages.STAGES, and its artifacts' folder."""
        return self.artifact.stage

    @property
    def fingerprint(self) -> str:
        return self.artifact.fingerprint

    @property
    def path(self) -> Path:
        return self.artifact.path


def _stage(home: Path, asset: str, kind: str, own: dict, inputs: dict, level: int | None = None) -> Stage:
    """`inputs` maps names to upstream Stages or to content hashes of outside data (nested dicts allowed)."""
    own = {**own, "code": CODE_VERSION[kind]}
    fp = stable_hash({"kind": kind, "own": own, "inputs": _resolve(inputs, "fingerprint")})
    return Stage(asset, Artifact(home, kind, fp, asset), stable_hash({"own": own, "inputs": _resolve(inputs, "code_version")}, 12),
                 level)


def _resolve(inputs, attr: str):
    if isinstance(inputs, Stage):
        return getattr(inputs, attr)
    if isinstance(inputs, dict):
        return {k: r for k, v in inputs.items() if (r := _resolve(v, attr)) is not None}
    return inputs if attr == "fingerprint" else None  # outside data moves data versions, not code versions


def latents_settings(cfg: Config, level: int) -> dict:
    """The settings that decide level `level`'s latents (sigma is not one: it only acts when z_l conditions)."""
    lv = cfg.level(level)
    own = {"pool": lv.pool, "channels": lv.channels, "shard_size": cfg.dataset.shard_size}
    if lv.kind != "semantic":  # pixel_base and cascade share these latents: the kind is level 0's business
        own.update(made_from="level0", level0=cfg.level0.model_dump(mode="json", exclude={"train"}))
    return own


def sampling_settings(cfg: Config) -> dict:
    """What decides how samples are drawn (not how they are scored): the samples' and variations' own settings."""
    evaluation_only = {"reference_images", "inception_weights", "eval_seeds", "oracle"}
    sampling = cfg.sampling.model_dump(mode="json", exclude=evaluation_only)
    if not sampling["level_steps"]:  # added later: older samples keep their fingerprints (config.without_new_defaults)
        del sampling["level_steps"]
    return sampling


def build_plan(cfg: Config, home: Path) -> dict[str, Stage]:
    from .ingest import source_fingerprint
    from .neighbours import K, QUERIES
    from models.weights import checkpoint_sha256, is_local_file

    # Where the data lies is not a setting: the source's content hash (an input) identifies it.
    ds = cfg.dataset.model_dump(mode="json", exclude={"path"})
    images = _stage(home, "images", "images", {"dataset": ds, "seed": cfg.seed},
                    {"source": source_fingerprint(cfg.dataset, cache_dir=home)})
    # Nor where a local checkpoint lies: its content hash is the "checkpoint" input ("hub", "none" and
    # "package:..." are names, kept).
    local = is_local_file(cfg.encoder.weights)
    enc = cfg.encoder.model_dump(mode="json", exclude={"batch_size", "weights"} if local else {"batch_size"})
    features = _stage(home, "encoder_features", "features", {"encoder": enc},
                      {"images": images, "checkpoint": checkpoint_sha256(cfg.encoder.weights)})
    svd = _stage(home, "svd", "svd", {}, {"features": features})
    plan = {s.asset: s for s in (images, features, svd)}
    for level in range(1, cfg.num_levels):
        made_from = {"images": images} if cfg.level(level).kind != "semantic" else \
            {"features": features, "svd": svd, "images": images}
        st = _stage(home, f"level_{level}_latents", "latents", latents_settings(cfg, level), made_from, level)
        plan[st.asset] = st
    for level in range(cfg.num_levels):
        st = _stage(home, f"level_{level}_model", "models", model_settings(cfg, level),
                    {"target": plan["images" if level == 0 else f"level_{level}_latents"],
                     "conditions": {k: plan[f"level_{k}_latents"] for k in cfg.conditions_of(level)}}, level)
        plan[st.asset] = st
    # The FID reference, its Inception file, the extra seeds and the oracle are the evaluation's business.
    sampling = sampling_settings(cfg)
    st = _stage(home, "samples", "samples", {"sampling": sampling, "guidance": cfg.guidance()},
                {f"level_{level}": plan[f"level_{level}_model"] for level in range(cfg.num_levels)})
    plan[st.asset] = st
    ref = _stage(home, "reference_stats", "reference", {"max_images": cfg.sampling.reference_images,
                                                        "inception": inception_identity(cfg)}, {"images": images})
    ev = _stage(home, "evaluation", "evaluation", {"k": EVAL_K, "eval_seeds": cfg.sampling.eval_seeds,
                                                   "oracle": cfg.sampling.oracle and cfg.num_levels > 1},
                {"samples": st, "reference": ref})
    nb = _stage(home, "level_neighbours", "neighbours", {"queries": QUERIES, "k": K},
                {"images": images, **{f"level_{level}": plan[f"level_{level}_latents"] for level in range(1, cfg.num_levels)}})
    plan.update({ref.asset: ref, ev.asset: ev, nb.asset: nb})
    if cfg.num_levels > 1:  # nothing to keep in a plain diffusion model
        vc = cfg.variations.model_dump(mode="json", exclude={"folder"})
        va = _stage(home, "variations", "variations", {"variations": vc, "sampling": sampling, "guidance": cfg.guidance()},
                    {"folder": folder_identity(cfg.variations.folder), "svd": svd,
                     **{f"latents_{level}": plan[f"level_{level}_latents"] for level in range(1, cfg.num_levels)},
                     **{f"model_{level}": plan[f"level_{level}_model"] for level in range(cfg.num_levels)}})
        plan[va.asset] = va
    return plan


def folder_identity(folder: Path | None) -> str:
    """Content hash of the images of `variations.folder` (their names and bytes), "none" without one."""
    if folder is None:
        return "none"
    from .cache import file_sha256
    from .variations import folder_images

    return stable_hash({p.name: file_sha256(p) for p in folder_images(folder)})


def plan_to_json(plan: dict[str, Stage]) -> dict:
    """The plan as JSON: what a training process needs to find every artifact without hashing the data again."""
    return {name: {"kind": st.kind, "fingerprint": st.fingerprint, "code_version": st.code_version,
                   "level": st.level, "home": str(st.artifact.home)} for name, st in plan.items()}


def plan_from_json(data: dict) -> dict[str, Stage]:
    """The inverse of plan_to_json."""
    return {name: Stage(name, Artifact(Path(v["home"]), v["kind"], v["fingerprint"], name), v["code_version"], v["level"])
            for name, v in data.items()}


def inception_identity(cfg: Config) -> str:
    """What the FID features are computed with: the content hash of the configured file, else the packaged copy."""
    from models.weights import checkpoint_sha256

    path = cfg.sampling.inception_weights
    if path is None:
        return "packaged"
    if not path.is_file():  # checkpoint_sha256 would call it an encoder checkpoint
        raise FileNotFoundError(f"sampling.inception_weights: file not found: {path}")
    return checkpoint_sha256(str(path))


def training_inputs(cfg: Config, level: int) -> list[str]:
    """The stages level `level`'s denoiser trains on: its target (images or its latents) and its conditions."""
    return ["images" if level == 0 else f"level_{level}_latents", *(f"level_{k}_latents" for k in cfg.conditions_of(level))]


def model_settings(cfg: Config, level: int) -> dict:
    """What decides level `level`'s denoiser: its training settings and the sigma of each level it is conditioned on."""
    own = {"train": cfg.train_config(level).model_dump(mode="json"), "conditioning": cfg.conditioning,
           "class_conditional": cfg.class_conditional, "seed": cfg.training_seed,
           "condition_sigmas": {str(k): cfg.level(k).sigma for k in cfg.conditions_of(level)}}
    if level == 0:
        own["level0"] = cfg.level0.model_dump(mode="json", exclude={"train"})
        if cfg.levels and cfg.levels[0].kind == "pixel_base":
            own["target"] = "residual over level 1"  # MSF: the same data and conditions as a cascade, another target
    return own


def artifact_states(plan: dict[str, Stage], full: bool = False) -> dict[str, tuple[str, list[str]]]:
    """Each stage's state, 'done', 'missing' or 'DAMAGED' (with what is wrong), checked against its marker."""
    out = {}
    for name, st in plan.items():
        if not st.artifact.is_complete():
            out[name] = ("missing", [])
        else:
            problems = st.artifact.damage(full=full)
            out[name] = ("DAMAGED" if problems else "done", problems)
    return out


def main(argv=None) -> int:
    import argparse

    from .config import load_config, nested_home
    from .table import TABLE

    ap = argparse.ArgumentParser(description="Where every artifact of the experiment ($NESTED_CONFIG) is, and its state.")
    ap.add_argument("--verify", action="store_true", help="hash every file of every artifact (default: sizes, "
                                                           "and hashes of files up to 16 MiB)")
    args = ap.parse_args(argv)
    cfg, home = load_config(), nested_home()
    plan = build_plan(cfg, home)
    print(f"experiment '{cfg.name}' (L = {cfg.num_levels}), artifacts under {home}")
    states = artifact_states(plan, full=args.verify)
    for name, st in plan.items():
        state, problems = states[name]
        print(f"  {state:<7} {name:<18} {st.path}")
        for p in problems[:5]:
            print(f"          {p}")
    if states["samples"][0] == "done":
        print(f"sample grid: {plan['samples'].path / 'grid.png'}")
    if states["evaluation"][0] == "done":
        row = plan["evaluation"].artifact.metadata()["row"]
        print(f"evaluation row (in {home / TABLE}): FID {row['fid']:.2f} "
              f"(real-data floor {row['fid_floor']:.2f}), precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
              f"N = {row['num_samples']}, {row['gflops_per_image']:.1f} GFLOPs per image")
    damaged = [n for n, (state, _) in states.items() if state == "DAMAGED"]
    if damaged:
        print(f"damaged: rematerialize {', '.join(damaged)} (each is set aside and rebuilt)")
    return 1 if damaged else 0


if __name__ == "__main__":
    raise SystemExit(main())
