"""Training checkpoints: safetensors weights (+ EMA), optimizer state and the step, written atomically.

A checkpoint is a directory ``ckpt-<step>`` built under a temporary name and renamed into place, so every
``ckpt-*`` directory is whole. Loading never unpickles arbitrary objects: weights are safetensors and the
optimizer state goes through ``torch.load(weights_only=True)``. A checkpoint that cannot be read is an
error, never a silent restart from scratch.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(e).__name__}: {e}). Training does not restart silently: "
            f"delete {path} to resume from an earlier checkpoint, or its parent directory to start over.") from e
    return state
