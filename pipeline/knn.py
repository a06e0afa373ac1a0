"""Exact nearest neighbours by faiss: a flat L2 index, on every GPU where faiss has one."""
from __future__ import annotations

import faiss
import numpy as np


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)  # faiss takes only C-contiguous float32


def nearest(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each query row's k nearest reference rows, nearest first.

    faiss ranks by |x|^2 + |y|^2 - 2xy, which loses precision: callers that need a distance recompute it exactly.
    """
    reference = as_f32(reference)
    index = faiss.IndexFlatL2(reference.shape[1])
    # faiss-gpu runs CPU indexes without a GPU, but its GPU calls fail unclearly there: ask first.
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(reference)
    return index.search(as_f32(query), k)[1]
