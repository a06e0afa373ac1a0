"""U-ViT denoiser (Bao et al. 2023) with coarser nested-diffusion levels fused in every two blocks.

The timestep, an optional class label and the noisy target's patches are tokens; long skip connections join
the i-th in-block to the i-th-from-last out-block. Follows U-ViT's libs/uvit.py; attention is timm's, which
calls F.scaled_dot_product_attention. The conditions z_hat_{>l} are not tokens (that would multiply the
sequence length): as in Nested Diffusion, each is upsampled by deconvolution to the token grid, and before
every second block each image token is concatenated with its cell's condition feature and passed through two
fully connected layers, added back as a residual. The token count is that of the plain U-ViT.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Attention

# U-ViT's published S / M / L / H configs; "small" and "tiny" are for CPUs and tests. Depth is odd:
# (depth - 1) / 2 in-blocks, one mid-block, (depth - 1) / 2 out-blocks.
UVIT_SIZES = {
    "tiny": dict(dim=64, depth=5, heads=2, mlp_ratio=2),
    "small": dict(dim=192, depth=7, heads=3, mlp_ratio=4),
    "S": dict(dim=512, depth=13, heads=8, mlp_ratio=4),
    "M": dict(dim=768, depth=17, heads=12, mlp_ratio=4),
    "L": dict(dim=1024, depth=21, heads=16, mlp_ratio=4),
    "H": dict(dim=1152, depth=29, heads=16, mlp_ratio=4),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps in the scheduler's units (0 .. T-1, int or float)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def to_grid(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, c, s, s) latent to `size`: bilinear when growing, area average when shrinking."""
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    if z.shape[-2] >= size[0] and z.shape[-1] >= size[1]:
        # Bilinear would skip rows when shrinking; averaging keeps every cell's information.
        return F.adaptive_avg_pool2d(z, size)
    return F.interpolate(z, size=size, mode="bilinear", align_corners=False)


class Block(nn.Module):
    """Pre-norm transformer block; out-blocks first merge the long skip with Linear(2D -> D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, skip: bool = False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CondFusion(nn.Module):
    """x_img + FC2(GELU(FC1([x_img, c]))): the paper's token-wise concatenation of the condition features."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(torch.cat([x, c], dim=-1))))


class Resize(nn.Module):
    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return to_grid(z, self.size)


def upsampler(shape: tuple[int, int, int], grid: tuple[int, int], dim: int) -> nn.Module:
    """A (B, c, h, w) condition to (B, dim, *grid): the paper's deconvolution when the grid is r times the
    condition, else resize + 1x1 conv, since any ratio must work (6x6 -> 8x8, or shrinking when the patches
    are larger than the condition's cells)."""
    c, h, w = shape
    r = grid[0] // h
    if r >= 1 and tuple(grid) == (r * h, r * w):
        return nn.ConvTranspose2d(c, dim, kernel_size=r, stride=r)  # r = 1: a per-cell linear map
    return nn.Sequential(Resize(grid), nn.Conv2d(c, dim, kernel_size=1))


class UViT(nn.Module):
    """Denoiser for one level: x (B, C, H, W) at timestep t, conditioned on coarser latents and a label.

    conds[k] has shape (B, *cond_shapes[k]); they are summed into one (B, N, dim) map over the N image tokens,
    fused into the image tokens before blocks 0, 2, 4, ... (in-blocks, mid-block, out-blocks in order).
    cond_drop (B,) bool swaps a sample's whole map for a learned null embedding (the unconditional mode of
    classifier-free guidance). With num_classes > 0 a label token is added; label num_classes is the null
    label, and labels=None means null for the whole batch. With no cond_shapes this is the plain U-ViT.
    Returns a tensor of x's shape; what it predicts (epsilon or v) is the caller's choice of loss.
    """

    def __init__(self, in_shape, cond_shapes=(), num_classes: int = 0, patch_size: int = 1, dim: int = 192,
                 depth: int = 7, heads: int = 3, mlp_ratio: float = 4.0, conv: bool = True):
        super().__init__()
        C, H, W = in_shape
        if H % patch_size or W % patch_size:
            raise ValueError(f"input {H}x{W} is not divisible by patch size {patch_size}")
        if depth % 2 == 0:
            raise ValueError(f"depth must be odd (in-blocks, mid-block, out-blocks), got {depth}")
        self.in_shape, self.cond_shapes = tuple(in_shape), [tuple(s) for s in cond_shapes]
        self.num_classes, self.patch_size, self.dim = num_classes, patch_size, dim
        self.grid = (H // patch_size, W // patch_size)
        num_patches = self.grid[0] * self.grid[1]

        self.patch_embed = nn.Conv2d(C, dim, kernel_size=patch_size, stride=patch_size)
        self.time_embed = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.extras = 1 + (num_classes > 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, dim))

        # No per-level type embedding: the levels' maps are summed, so it would only add a constant that the
        # upsamplers' biases already provide; each level is told apart by its own upsampler weights.
        self.cond_proj = nn.ModuleList(upsampler(s, self.grid, dim) for s in self.cond_shapes)
        self.cond_null = nn.Parameter(torch.zeros(1, 1, dim)) if self.cond_shapes else None
        # One fusion per pair of blocks; none at all without conditions, so the L = 1 baseline is plain U-ViT.
        self.fusions = nn.ModuleList(CondFusion(dim) for _ in range((depth + 1) // 2 if self.cond_shapes else 0))

        blk = dict(dim=dim, heads=heads, mlp_ratio=mlp_ratio)
        self.in_blocks = nn.ModuleList(Block(**blk) for _ in range(depth // 2))
        self.mid_block = Block(**blk)
        self.out_blocks = nn.ModuleList(Block(**blk, skip=True) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch_size ** 2 * C)
        # U-ViT's 3x3 conv smooths the seams between independently decoded patches.
        self.final_layer = nn.Conv2d(C, C, 3, padding=1) if conv else nn.Identity()

        for p in (self.pos_embed, self.cond_null):
            if p is not None:
                trunc_normal_(p, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def cond_map(self, conds, cond_drop):
        """The (B, N, dim) sum of the upsampled conditions, or None for a model without conditions."""
        if len(conds) != len(self.cond_shapes):
            raise ValueError(f"expected {len(self.cond_shapes)} conditions {self.cond_shapes}, got {len(conds)}")
        if not conds:
            return None
        if cond_drop is not None:
            # torch.where, not a multiply (NaN * 0 is NaN): dropped inputs are zeroed before the upsamplers so
            # that not even their weight gradients see them, then the map is swapped for the null embedding.
            conds = [torch.where(cond_drop[:, None, None, None], torch.zeros_like(z), z) for z in conds]
        c = sum(up(z) for up, z in zip(self.cond_proj, conds)).flatten(2).transpose(1, 2)
        if cond_drop is not None:
            c = torch.where(cond_drop[:, None, None], self.cond_null.to(c.dtype), c)
        return c

    def fuse(self, x, c, i):
        if c is None or i % 2:
            return x
        e = self.extras  # the time and label tokens have no grid cell, so they are left as they are
        return torch.cat([x[:, :e], self.fusions[i // 2](x[:, e:], c)], dim=1)

    def forward(self, x, t, conds=(), labels=None, cond_drop=None):
        B = x.shape[0]
        c = self.cond_map(conds, cond_drop)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = t.expand(B) if t.ndim == 0 else t
        extra = [self.time_embed(timestep_embedding(t, self.dim))[:, None]]
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            extra.append(self.label_emb(labels)[:, None])
        elif labels is not None:
            raise ValueError("labels given to a model built with num_classes=0")
        x = torch.cat(extra + [x], dim=1) + self.pos_embed

        skips, i = [], 0
        for blk in self.in_blocks:
            x = blk(self.fuse(x, c, i))
            skips.append(x)
            i += 1
        x = self.mid_block(self.fuse(x, c, i))
        for blk in self.out_blocks:
            i += 1
            x = blk(self.fuse(x, c, i), skips.pop())

        x = self.decoder_pred(self.norm(x))[:, self.extras:]
        p, (C, H, W) = self.patch_size, self.in_shape
        x = x.reshape(B, *self.grid, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        return self.final_layer(x)
