"""Top-down sampling of the nested hierarchy: z_{L-1}, then each finer level given the generated coarser ones.

Guidance convention (U-ViT's): eps = eps_cond + w * (eps_cond - eps_uncond); w = 0 is plain conditional
sampling, and the unconditional pass is skipped. Each level has its own w, decaying coarse to fine in the paper.
As in training, the generated coarser latents get their own level's sigma noise before they condition.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .plan import Stage
from .train import load_level_model


def make_scheduler(spec: dict, kind: str = "dpm", thresholding: bool = False):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    tc = spec["train"]
    common = dict(num_train_timesteps=tc["num_train_timesteps"], beta_schedule=tc["beta_schedule"],
                  prediction_type=tc["prediction"])
    if kind == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", thresholding=thresholding)
    if kind == "ddim":
        return DDIMScheduler(**common, clip_sample=False, thresholding=thresholding)
    if kind == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, thresholding=thresholding)
    raise ValueError(f"unknown sampler '{kind}': choose dpm, ddim or ddpm")


@torch.inference_mode()
def sample_level(model, spec: dict, conds: list[torch.Tensor], n: int, steps: int, guidance: float,
                 generator: torch.Generator, kind: str = "dpm", thresholding: bool = False,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    sched = make_scheduler(spec, kind, thresholding)
    sched.set_timesteps(steps)
    x = torch.randn((n, *spec["in_shape"]), generator=generator) * sched.init_noise_sigma
    guided = guidance != 0 and (conds or labels is not None)
    for t in sched.timesteps:
        tt = torch.full((n,), int(t), dtype=torch.long)
        xin = sched.scale_model_input(x, t)
        out = model(xin, tt, conds, labels)
        if guided:
            null = torch.full_like(labels, spec["num_classes"]) if labels is not None else None
            out_u = model(xin, tt, conds, null, torch.ones(n, dtype=torch.bool))
            out = out + guidance * (out - out_u)
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


def sample_hierarchy(cfg: Config, plan: dict[str, Stage], n: int, seed: int = 0, steps: int = 25,
                     guidance: list[float] | None = None, kind: str = "dpm", pixel_thresholding: bool = True,
                     batch_size: int = 256, use_ema: bool = True) -> dict[int, torch.Tensor]:
    """Generate n samples of every level; returns {level: tensor}. Level 0 pixels are in [-1, 1]."""
    guidance = guidance or [0.0] * cfg.num_levels
    out: dict[int, list[torch.Tensor]] = {level: [] for level in range(cfg.num_levels)}
    models = {level: load_level_model(plan[f"level_{level}_model"].artifact.require(), use_ema) for level in range(cfg.num_levels)}
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, start]).generate_state(1)[0]))
        gen: dict[int, torch.Tensor] = {}
        for level in reversed(range(cfg.num_levels)):
            model, spec = models[level]
            conds = [gen[k] + cfg.levels[k - 1].sigma * torch.randn(gen[k].shape, generator=g)
                     for k in cfg.conditions_of(level)]
            thresh = pixel_thresholding and level == 0 and cfg.level0.space == "pixels"
            gen[level] = sample_level(model, spec, conds, b, steps, guidance[level], g, kind, thresh)
        for level, z in gen.items():
            out[level].append(z)
    return {level: torch.cat(zs) for level, zs in out.items()}


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, path: Path, cols: int = 8, scale: int = 2) -> None:
    """(N, H, W, 3) uint8 -> one PNG grid (torchvision's make_grid, white padding), upscaled for viewing."""
    from torchvision.utils import make_grid, save_image

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    save_image(make_grid(x, nrow=cols, padding=2, pad_value=1.0), path)
