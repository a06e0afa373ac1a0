"""Exact nearest neighbours by faiss: a flat L2 index, on every GPU where the stage's device is a GPU and faiss has
one; and the same for a few queries against reference rows that arrive in blocks (`RunningNearest`), so the
reference is never held whole."""
from __future__ import annotations

import faiss
import numpy as np
import torch

from .runtime import resolve_device


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)  # faiss takes only C-contiguous float32


def faiss_on_gpu(device: str | torch.device = "auto") -> bool:
    """Whether an index goes to the GPU: where the stage computes on one (`compute.device`, or a resolved device) and
    faiss was built with GPUs. A CPU device never touches a GPU, even where faiss sees one."""
    kind = device.type if isinstance(device, torch.device) else resolve_device(device).type
    # faiss-gpu runs CPU indexes without a GPU, but its GPU calls fail unclearly there: ask first.
    return kind == "cuda" and faiss.get_num_gpus() > 0


def nearest(query: np.ndarray, reference: np.ndarray, k: int, device: str | torch.device = "auto") -> np.ndarray:
    """Indices (N, k) of each query row's k nearest reference rows, nearest first (`device`: see faiss_on_gpu).

    faiss ranks by |x|^2 + |y|^2 - 2xy, which loses precision: callers that need a distance recompute it exactly.
    """
    reference = as_f32(reference)
    index = faiss.IndexFlatL2(reference.shape[1])
    if faiss_on_gpu(device):
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(reference)
    return index.search(as_f32(query), k)[1]


class RunningNearest:
    """The k nearest reference rows of a few queries, the reference streamed block by block: memory is one block
    and k candidates per query, whatever the number of rows. Ranks as `nearest` over the whole reference (faiss's
    distances; a tie keeps the earlier row)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = as_f32(queries), k
        self.dist = np.zeros((len(queries), 0), np.float32)
        self.keys = np.zeros((len(queries), 0), object)

    def update(self, block: np.ndarray, keys: list) -> None:
        if len(keys) == 0:
            return
        index = faiss.IndexFlatL2(self.queries.shape[1])
        index.add(as_f32(block))
        dist, idx = index.search(self.queries, min(self.k, len(keys)))
        keys = np.asarray(keys, dtype=object)
        merged_dist = np.concatenate([self.dist, dist], axis=1)
        merged_keys = np.concatenate([self.keys, keys[idx]], axis=1)
        order = np.argsort(merged_dist, axis=1, kind="stable")[:, : self.k]
        self.dist = np.take_along_axis(merged_dist, order, axis=1)
        self.keys = np.take_along_axis(merged_keys, order, axis=1)

    def result(self) -> list[list]:
        """Each query's k nearest keys, nearest first."""
        return [list(row) for row in self.keys]


# A streamed block of reference rows: 16 MiB or 2,048 rows, whichever comes first, whatever the rows' size (so a
# set of small latents does not grow its block with the set up to the byte budget).
BLOCK_BYTES, BLOCK_ROWS = 16 << 20, 2048


def blocks(stream, max_bytes: int = BLOCK_BYTES, max_rows: int = BLOCK_ROWS):
    """(keys, (n, d) float32 rows, flattened) of a stream of (key, array, label), at most `max_bytes` or `max_rows`
    at a time."""
    keys, xs, size = [], [], 0
    for key, x, _ in stream:
        keys.append(key)
        xs.append(np.asarray(x, np.float32).ravel())
        size += xs[-1].nbytes
        if size >= max_bytes or len(keys) == max_rows:
            yield keys, np.stack(xs)
            keys, xs, size = [], [], 0
    if keys:
        yield keys, np.stack(xs)
