"""Running per-channel statistics of (N, C, H, W) batches, over samples and positions, in float64."""
from __future__ import annotations

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
