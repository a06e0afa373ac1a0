"""Training checkpoints: safetensors weights (+ EMA), optimizer state and the step, written atomically; and the
published run that a longer run of the same trajectory continues.

A checkpoint is a directory ``ckpt-<step>`` built under a temporary name and renamed into place, so every
``ckpt-*`` directory is whole. Loading never unpickles arbitrary objects: weights are safetensors and the
optimizer state goes through ``torch.load(weights_only=True)``. A checkpoint that cannot be read is an
error, never a silent restart from scratch.

A published model keeps its optimizer state (``optimizer.pt``, twice the weights in size) beside its weights, so a
run of the same settings with more steps starts where it ended (`longest_shorter_run`) instead of from step 0.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .cache import Artifact

OPTIMIZER = "optimizer.pt"  # in a checkpoint and in a published model


class CheckpointError(RuntimeError):
    pass


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: tied weights get their own copy
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(work: Path, step: int, model, ema, optimizer, extra: dict, keep: int = 2) -> Path:
    final = work / f"ckpt-{step:08d}"
    tmp = work / f".ckpt-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state(model), str(tmp / "model.safetensors"))
    save_file(_state(ema), str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in sorted(work.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(work: Path) -> Path | None:
    found = sorted(work.glob("ckpt-*")) if work.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model, ema, optimizer) -> dict:
    """Restore in place; returns the saved state (step, loss history, ...)."""
    try:
        state = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
        optimizer.load_state_dict(torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(e).__name__}: {e}). Training does not restart silently: "
            f"delete {path} to resume from an earlier checkpoint, or its parent directory to start over.") from e
    return state


def longest_shorter_run(stage, steps: int) -> Artifact | None:
    """The published model with the most steps below `steps` on `stage`'s trajectory (pipeline/stage.py), among
    those that kept their optimizer state; None if there is none. `stage` is a models Stage."""
    if stage.trajectory is None or not stage.path.parent.is_dir():
        return None
    best, best_steps = None, 0
    for folder in stage.path.parent.iterdir():
        art = Artifact(stage.artifact.home, stage.kind, folder.name, stage.asset)
        # a fingerprint's folder only: not a build (.tmp-), a damaged copy set aside or a run's checkpoints (.work)
        if "." in folder.name or folder.name == stage.fingerprint or not art.is_complete():
            continue
        try:
            meta = art.metadata()
        except (OSError, ValueError):
            continue  # an unreadable marker: that artifact's own checks say so
        if (meta.get("trajectory") == stage.trajectory and best_steps < meta.get("steps", 0) < steps
                and OPTIMIZER in (meta.get("files") or {})):
            best, best_steps = art, meta["steps"]
    return best


def load_published_run(art: Artifact, model, ema, optimizer) -> dict:
    """Restore a published model's weights, EMA and optimizer state in place (verified against its marker first);
    its metadata."""
    path, meta = art.require(), art.metadata()
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    ema.module.load_state_dict(load_file(str(path / "ema.safetensors")))
    ema.n_averaged.fill_(meta["steps"])  # one EMA update a step: its warm-up goes on where it stopped
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True))
    return meta
