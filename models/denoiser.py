"""The registry of per-level denoiser backbones (uvit, unet, matryoshka) and their sizes, and what a denoiser costs.

Every denoiser is called as model(x, t, conds=(), labels=None, cond_drop=None) and returns x's shape. x is the
level's data, except for a backbone that denoises an extended state (matryoshka: every nested resolution at
once), whose `state_shape` attribute says its layout (`input_shape`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.matryoshka import MATRYOSHKA_SIZES, NestedUNet
from models.unet import UNET_SIZES, CondUNet
from models.uvit import UVIT_SIZES, UViT


@dataclass(frozen=True)
class Backbone:
    build: Callable[..., nn.Module]  # (in_shape, cond_shapes, num_classes, patch_size, **size) -> denoiser
    sizes: dict[str, dict]  # size name -> the keyword arguments of that size
    patches: bool  # it cuts its input into patch_size x patch_size patches (the config checks they tile it)


BACKBONES: dict[str, Backbone] = {}


def register_backbone(name: str, sizes: dict[str, dict], patches: bool = False):
    """Register `build(in_shape, cond_shapes, num_classes, patch_size, **size)` as the backbone `name`."""
    def register(build):
        BACKBONES[name] = Backbone(build, sizes, patches)
        return build
    return register


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def default_patch_size(height: int) -> int:
    """Patch size giving at most 8x8-ish token grids on small inputs, 1 (one token per cell) on latents."""
    return 1 if height <= 8 else 2 if height <= 16 else 4


@register_backbone("uvit", UVIT_SIZES, patches=True)
def _uvit(in_shape, cond_shapes, num_classes, patch_size, **size) -> nn.Module:
    return UViT(in_shape, cond_shapes, num_classes, patch_size=patch_size or default_patch_size(in_shape[1]), **size)


@register_backbone("unet", UNET_SIZES)
def _unet(in_shape, cond_shapes, num_classes, patch_size, **size) -> nn.Module:
    return CondUNet(in_shape, cond_shapes, num_classes, **size)  # no patches: patch_size is U-ViT's


@register_backbone("matryoshka", MATRYOSHKA_SIZES)
def _matryoshka(in_shape, cond_shapes, num_classes, patch_size, **size) -> nn.Module:
    return NestedUNet(in_shape, cond_shapes, num_classes, **size)


def input_shape(model: nn.Module, data_shape) -> tuple[int, ...]:
    """The shape of one input of `model` for data of `data_shape`: its extended state where it has one."""
    return tuple(getattr(model, "state_shape", data_shape))


def build_denoiser(backbone: str, size: str, in_shape: tuple[int, int, int],
                   cond_shapes: list[tuple[int, int, int]] = (), num_classes: int = 0,
                   patch_size: int | None = None) -> nn.Module:
    """The denoiser of one level: target in_shape (C, H, W), coarser latents cond_shapes (c_k, s_k, s_k).

    num_classes > 0 adds label conditioning with num_classes + 1 embeddings (the last is the null label).
    patch_size applies to backbones that cut patches (uvit; default from the height); the others ignore it.
    """
    entry = get_backbone(backbone)
    if size not in entry.sizes:
        raise ValueError(f"unknown {backbone} size {size!r}; valid: {list(entry.sizes)}")
    in_shape, cond_shapes = tuple(in_shape), [tuple(s) for s in cond_shapes]
    for s in cond_shapes:
        if len(s) != 3 or s[1] > in_shape[1] or s[2] > in_shape[2]:
            raise ValueError(f"condition shape {s} must be (c, s, s) no larger than the target {in_shape}")
    return entry.build(in_shape, cond_shapes, num_classes, patch_size, **entry.sizes[size])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# On the CPU, SDPA dispatches to a kernel that torch's flop counter has no formula for (it would count 0).
_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


@torch.no_grad()
def gflops_per_step(model: nn.Module, in_shape, cond_shapes=(), num_classes: int = 0, batch: int = 1) -> float:
    """GFLOPs (2 per multiply-add) of one forward pass for one image, counted by torch's FlopCounterMode.

    A sampling step with classifier-free guidance runs two forwards (conditional and unconditional), so it
    costs twice this. Works on any device, including "meta" (shapes only, nothing computed).
    """
    device = next(model.parameters()).device
    x = torch.randn(batch, *input_shape(model, in_shape), device=device)
    conds = [torch.randn(batch, *s, device=device) for s in cond_shapes]
    t = torch.full((batch,), 500, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if num_classes > 0 else None
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter:
        model(x, t, conds, labels)
    return counter.get_total_flops() / batch / 1e9
