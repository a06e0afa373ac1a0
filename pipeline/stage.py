"""A stage of the plan, and the declaration of a kind of stage.

A stage's fingerprint hashes its own config fields, its inputs' fingerprints and its kind's code version, so two
experiments that differ only in L or sigma share features, SVD and latents, and an edit to one level's shape
moves only that level's latents. ``code_version`` (the asset's code version) hashes the stage's own fields and its
inputs' code versions: the config lineage without the data. After a config edit the UI thus marks stale exactly
the assets whose fingerprints moved; the UI's own staleness reaches a child only once its parent is rerun.

Every kind of stage is declared once, as a `StageKind` (pipeline/stages.py lists them): the plan, the stage
runner, the asset checks and garbage collection all iterate those declarations.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cache import Artifact, stable_hash


@dataclass(frozen=True)
class Stage:
    asset: str  # the asset's name in the graph (e.g. encoder_features; its artifacts lie under the kind, features/)
    artifact: Artifact
    code_version: str  # hash of the stage's own settings + code version
    level: int | None = None  # the level a latents or model stage belongs to; None for level-free stages
    inputs: tuple[str, ...] = ()  # the stages it is made from (the asset's upstream), in the order declared
    # Shared by the stages that differ from this one only in how long they run (a model's steps): a longer run
    # continues the longest such run already published (pipeline/train.py). None for a kind without a length.
    trajectory: str | None = None

    @property
    def kind(self) -> str:
        """What the stage builds: its StageKind's name, and its artifacts' folder."""
        return self.artifact.stage

    @property
    def fingerprint(self) -> str:
        return self.artifact.fingerprint

    @property
    def path(self) -> Path:
        return self.artifact.path


@dataclass(frozen=True)
class Check:
    """A data-quality check of one stage's artifact: `run(cfg, plan, stage)` returns a pipeline.checks.CheckOutcome."""
    name: str
    description: str
    run: Callable[[Any, dict, Stage], Any]


@dataclass(frozen=True)
class StageKind:
    """One kind of stage, declared once: what it is called, which settings and inputs decide its artifacts (its
    settings lineage), its code version, how it is built and how it is checked.

    `stages(cfg)` lists its stages as (asset name, level or None); for each, `settings(cfg, level)` gives the config
    fields it hashes and `inputs(cfg, plan, level, home)` names what it is made from: upstream Stages of the plan
    built so far, or content hashes of outside data (nested dicts allowed; `home`, the artifact root, keeps a
    cache of the source's file hashes). `build(cfg, plan, out_dir, log, **where)` writes
    the artifact (`where`: ``level=``, ``engine=`` when `uses_engine`, and the asset's keywords); `materialize`, when
    set, replaces the cache's own build-unless-intact (training drives torchrun's ranks and its checkpoints).
    """
    name: str
    code_version: str  # bump when a change of the code changes what it writes: it and everything downstream rebuild
    stages: Callable[[Any], list[tuple[str, int | None]]]
    settings: Callable[[Any, int | None], dict]
    inputs: Callable[[Any, dict, int | None, Path], dict]
    build: Callable[..., dict]
    checks: tuple[Check, ...] = ()
    uses_engine: bool = False
    materialize: Callable[..., dict] | None = None
    # The settings without what only says how long the stage runs (a model's steps): they key `Stage.trajectory`.
    trajectory: Callable[[dict], dict] | None = None


def one(asset: str) -> Callable[[Any], list[tuple[str, None]]]:
    """`stages` of a kind with one level-free stage, named `asset`."""
    return lambda cfg: [(asset, None)]


def make_stage(home: Path, kind: StageKind, asset: str, level: int | None, own: dict, inputs: dict) -> Stage:
    """The stage of `kind` with its own settings `own` made from `inputs` (see StageKind)."""
    own = {**own, "code": kind.code_version}
    fp = stable_hash({"kind": kind.name, "own": own, "inputs": _resolve(inputs, "fingerprint")})
    trajectory = None if kind.trajectory is None else stable_hash(
        {"kind": kind.name, "own": kind.trajectory(own), "inputs": _resolve(inputs, "fingerprint")})
    return Stage(asset, Artifact(home, kind.name, fp, asset),
                 stable_hash({"own": own, "inputs": _resolve(inputs, "code_version")}, 12), level,
                 tuple(_upstream(inputs)), trajectory)


def _resolve(inputs, attr: str):
    if isinstance(inputs, Stage):
        return getattr(inputs, attr)
    if isinstance(inputs, dict):
        return {k: r for k, v in inputs.items() if (r := _resolve(v, attr)) is not None}
    return inputs if attr == "fingerprint" else None  # outside data moves data versions, not code versions


def _upstream(inputs) -> list[str]:
    if isinstance(inputs, Stage):
        return [inputs.asset]
    if isinstance(inputs, dict):
        return list(dict.fromkeys(name for v in inputs.values() for name in _upstream(v)))
    return []
