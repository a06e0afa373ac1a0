"""Running statistics of streamed batches, in float64: per-channel statistics of (N, C, H, W) latents, the mean and
covariance of (n, d) features, and a capped deterministic subsample of keyed rows."""
from __future__ import annotations

import hashlib
import heapq

import numpy as np
import torch


class ChannelStats:
    """Streamed per-channel mean and std (standardized latents: 0 and 1), and the largest |value| seen."""

    def __init__(self):
        self.n, self.s1, self.s2, self.abs_max = 0, 0.0, 0.0, 0.0

    def update(self, z: torch.Tensor) -> None:
        z = z.double()
        self.n += z.shape[0] * z.shape[2] * z.shape[3]
        self.s1 = self.s1 + z.sum((0, 2, 3))
        self.s2 = self.s2 + (z**2).sum((0, 2, 3))
        self.abs_max = max(self.abs_max, float(z.abs().max()))

    def mean(self) -> torch.Tensor:
        return self.s1 / self.n

    def second_moment(self) -> torch.Tensor:
        return self.s2 / self.n

    def var(self) -> torch.Tensor:
        """The population variance (it can dip below 0 by rounding: clamp before a square root)."""
        return self.second_moment() - self.mean() ** 2

    def summary(self) -> dict:
        mean, std = self.mean(), self.var().clamp_min(0).sqrt()
        return {"mean_abs_max": float(mean.abs().max()), "std_mean": float(std.mean()),
                "std_min": float(std.min()), "std_max": float(std.max()), "abs_max": self.abs_max}


class FeatureMoments:
    """Streamed mean and covariance of (n, d) feature batches, in float64: memory d + d^2 floats whatever the number
    of rows. Batches are merged by Chan et al.'s pairwise update (each batch centred on its own mean), which keeps
    the precision that the textbook sum of x x^T loses when the mean is large against the spread; the result equals
    np.mean and np.cov (ddof 1) up to rounding."""

    def __init__(self, dim: int):
        self.n = 0
        self._mean = np.zeros(dim)
        self._m2 = np.zeros((dim, dim))  # sum of outer products of the rows centred on the running mean

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self._mean):
            raise ValueError(f"expected (n, {len(self._mean)}) rows, got {x.shape}")
        if len(x) == 0:
            return
        m, batch_mean = len(x), x.mean(0)
        centred = x - batch_mean
        delta = batch_mean - self._mean
        n = self.n + m
        self._m2 += centred.T @ centred  # A^T A: numpy's syrk, exactly symmetric
        self._m2 += np.outer(delta, delta * (self.n * m / n))
        self._mean += delta * (m / n)
        self.n = n

    def mean(self) -> np.ndarray:
        return self._mean.copy()

    def covariance(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 rows, got {self.n}")
        cov = self._m2 / (self.n - 1)
        return (cov + cov.T) / 2  # the rank-one updates leave asymmetry at rounding level; FID's sqrtm wants none


def key_rank(key: str) -> int:
    """A key's place in a fixed pseudo-random order of every key (64 bits of its BLAKE2b hash): the same on every
    machine and in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=b"subsample").digest(), "big")


class HashedSubsample:
    """A deterministic, uniform subsample of at most `cap` rows of a keyed stream: the rows whose keys rank first
    (`key_rank`; bottom-k sampling). Which rows are kept depends on the keys alone, not on the stream's order or
    batching, and a larger cap keeps a superset. Memory: `cap` rows (grown as they arrive). They come back in stream
    order, so a stream of at most `cap` rows comes back whole, as it came."""

    def __init__(self, cap: int, dim: int, dtype=np.float32):
        if cap < 1:
            raise ValueError(f"cap {cap}: keep at least one row")
        self.cap, self.seen = cap, 0
        self._rows = np.empty((min(cap, 1024), dim), dtype)
        self._keys: list[str] = []
        # A max-heap of what is kept, by (rank, position), as negated tuples: its root is the row to evict first.
        self._heap: list[tuple[int, int, int]] = []  # (-rank, -position, slot)

    def update(self, keys: list[str], rows: np.ndarray) -> None:
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
        for key, row in zip(keys, rows):
            entry = (-key_rank(key), -self.seen)
            self.seen += 1
            if len(self._heap) < self.cap:
                slot = len(self._heap)
                self._make_room(slot + 1)
                self._keys.append(key)
                heapq.heappush(self._heap, (*entry, slot))
            elif entry > self._heap[0][:2]:  # ranks before the last one kept
                slot = heapq.heapreplace(self._heap, (*entry, self._heap[0][2]))[2]
                self._keys[slot] = key
            else:
                continue
            self._rows[slot] = row

    def _make_room(self, size: int) -> None:
        if size > len(self._rows):
            grown = np.empty((min(self.cap, 2 * len(self._rows)), self._rows.shape[1]), self._rows.dtype)
            grown[: len(self._rows)] = self._rows
            self._rows = grown

    def result(self) -> tuple[list[str], np.ndarray]:
        """(keys, rows) kept, in stream order."""
        slots = [slot for _, _, slot in sorted(self._heap, key=lambda e: -e[1])]
        return [self._keys[s] for s in slots], self._rows[slots]
