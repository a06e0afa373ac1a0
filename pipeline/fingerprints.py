"""Fingerprints of what a result depends on: the config's (`config_fingerprint`, a row's identity in the evaluation
table) beside the stages' own (pipeline/stage.py, through the plan).

Fields added to the schema after results were recorded leave old fingerprints as they were while they hold their
defaults (`without_new_defaults`): the rule the config fingerprint and the samples' settings both follow.
"""
from __future__ import annotations

from pathlib import Path

from models.weights import checkpoint_sha256, is_local_file

from .cache import stable_hash
from .ingest import source_fingerprint
from .schema import Config, LevelConfig, SamplingConfig


def config_fingerprint(cfg: Config, cache_dir: Path | None = None) -> str:
    """Hash of everything an experiment's results depend on in its config (not its name, not other variants).

    Files enter by content, not by location: `dataset.path` is replaced by the source's content fingerprint
    and a local `encoder.weights` or `sampling.inception_weights` file by its sha256, so the same config in
    another checkout, a path spelled through `..` or a symlink, or a touched file give the same fingerprint.
    (`level0.vae`, when a local diffusers folder, stays as spelled: it is a model id as often as a path.)
    `cache_dir` (the artifact home) lets a folder source's file hashes be reused across processes.
    """
    # The variations picture is no result: its settings stay out (and old rows keep their fingerprints).
    dump = without_new_defaults(cfg.model_dump(mode="json", exclude={"variants", "name", "variations", "compute"}))
    del dump["dataset"]["path"]
    dump["dataset"]["source_fingerprint"] = source_fingerprint(cfg.dataset, cache_dir=cache_dir)
    if is_local_file(cfg.encoder.weights):
        dump["encoder"]["weights"] = {"sha256": checkpoint_sha256(cfg.encoder.weights)}
    if cfg.sampling.inception_weights is not None:
        dump["sampling"]["inception_weights"] = {"sha256": checkpoint_sha256(str(cfg.sampling.inception_weights))}
    if cfg.sampling.reference_npz is not None:
        dump["sampling"]["reference_npz"] = {"sha256": checkpoint_sha256(str(cfg.sampling.reference_npz))}
    return stable_hash(dump)


def without_new_defaults(dump: dict) -> dict:
    """A config dump without fields added after results were recorded, where they hold their defaults (a level's
    kind 'semantic', no per-level sampling steps): configs written before them keep their fingerprints."""
    for lv in dump.get("levels", []):
        if lv.get("kind") == LevelConfig.model_fields["kind"].default:
            del lv["kind"]
    if "sampling" in dump and not dump["sampling"].get("level_steps"):
        dump["sampling"].pop("level_steps", None)
    sampling_fields = SamplingConfig.model_fields
    for name in ("pr_reference", "reference_npz"):  # the bounded evaluation's: at their defaults, results are as before
        if name in dump.get("sampling", {}) and dump["sampling"][name] == sampling_fields[name].default:
            del dump["sampling"][name]
    return dump
