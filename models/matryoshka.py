"""Matryoshka denoiser (MDM, seed 003): one network denoising the image at nested resolutions jointly.

MDM's diffusion runs in an extended space: z_t = (z_t^1, ..., z_t^R), z^r the image downsampled to H / 2^r,
each noised on its own and each predicted, with a loss per resolution. Here the extended state is one tensor, so
the level's training loop, schedulers and samplers stay as they are: each resolution's (C, h, h) is laid out as
(C, H, h*h / H) (a reshape: i.i.d. noise stays i.i.d.) and the pieces are concatenated along the width:

    state (C, H, H + H/4 + H/16 + ...)  =  [ x at H | x at H/2, reshaped | x at H/4, reshaped | ... ]

The network nests its resolutions from the inside out: the coarsest is denoised by its own conditional UNet
(diffusers' UNet2DModel, as models.unet), and each finer one by a UNet that also sees the coarser prediction,
upsampled. One forward predicts every resolution; the MSE over the state is the sum of the per-resolution losses
(each weighted by its size). A simplification of MDM's NestedUNet, which passes hidden features rather than
predictions from the inner to the outer network; sampling keeps the finest resolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.unet import UNET_SIZES, CondUNet
from models.uvit import to_grid

# nest: how many resolutions (H, H/2, ...); unet: the UNet size of every resolution's network
MATRYOSHKA_SIZES = {
    "tiny": dict(nest=2, unet="tiny"),
    "small": dict(nest=2, unet="small"),
}


def resolutions(height: int, nest: int) -> list[int]:
    sizes = [height >> r for r in range(nest)]
    if any(h << r != height or h * h % height for r, h in enumerate(sizes)):
        raise ValueError(f"a {nest}-resolution matryoshka needs the height ({height}) divisible by 4^{nest - 1} "
                         f"(each resolution's h x h laid out as {height} rows)")
    return sizes


def state_shape(image_shape, nest: int) -> tuple[int, int, int]:
    """The extended state's (C, H, W') for an image of (C, H, H)."""
    c, h, w = image_shape
    if h != w:
        raise ValueError(f"a matryoshka state needs a square image, got {h}x{w}")
    return (c, h, sum(s * s // h for s in resolutions(h, nest)))


def pack(x: torch.Tensor, nest: int) -> torch.Tensor:
    """(B, C, H, H) images -> (B, C, H, W') states: the image and its area-downsampled copies side by side."""
    b, c, h, _ = x.shape
    parts = [to_grid(x, (s, s)) for s in resolutions(h, nest)]
    return pack_parts(parts)


def pack_parts(parts: list[torch.Tensor]) -> torch.Tensor:
    b, c, h, _ = parts[0].shape
    return torch.cat([p.reshape(b, c, h, -1) for p in parts], dim=-1)


def unpack(state: torch.Tensor, nest: int) -> list[torch.Tensor]:
    """The inverse of pack_parts: every resolution's (B, C, h, h), finest first."""
    b, c, h, _ = state.shape
    out, start = [], 0
    for s in resolutions(h, nest):
        width = s * s // h
        out.append(state[..., start:start + width].reshape(b, c, s, s))
        start += width
    return out


class NestedUNet(nn.Module):
    """Denoiser of an extended state (module docstring); the call signature of models.unet.CondUNet."""

    def __init__(self, image_shape, cond_shapes=(), num_classes: int = 0, nest: int = 2, unet: str = "tiny"):
        super().__init__()
        c, h, _ = image_shape
        self.nest, self.channels = nest, c
        self.state_shape = state_shape(image_shape, nest)
        sizes = resolutions(h, nest)
        # finest first, as in the state; the coarsest sees only its own input, the others the coarser prediction too
        self.nets = nn.ModuleList([
            CondUNet((c if r == nest - 1 else 2 * c, s, s), cond_shapes, num_classes, **UNET_SIZES[unet])
            for r, s in enumerate(sizes)])

    def forward(self, x, t, conds=(), labels=None, cond_drop=None):
        zs = unpack(x, self.nest)
        preds: list[torch.Tensor] = [None] * self.nest
        for r in reversed(range(self.nest)):
            inp = zs[r] if r == self.nest - 1 else torch.cat(
                [zs[r], to_grid(preds[r + 1], tuple(zs[r].shape[-2:]))], 1)
            preds[r] = self.nets[r](inp, t, conds, labels, cond_drop)[:, : self.channels]
        return pack_parts(preds)
