"""U-ViT denoiser (Bao et al. 2023) with coarser nested-diffusion levels entering as tokens.

Everything is a token: the timestep, an optional class label, the condition latents z_hat_{>l} and the
noisy target's patches. Long skip connections join the i-th in-block to the i-th-from-last out-block.
Follows U-ViT's libs/uvit.py; attention is timm's, which calls F.scaled_dot_product_attention.
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


class UViT(nn.Module):
    """Denoiser for one level: x (B, C, H, W) at timestep t, conditioned on coarser latents and a label.

    conds[k] has shape (B, *cond_shapes[k]). cond_drop (B,) bool swaps every condition token of a sample for
    learned null tokens (the unconditional mode of classifier-free guidance). With num_classes > 0 a label
    token is added; label num_classes is the null label, and labels=None means null for the whole batch.
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

        # Conditions are resized to the token grid, then projected per cell. Interpolation + 1x1 conv rather
        # than the paper's ConvTranspose2d: it handles any size ratio (6x6 -> 8x8, or shrinking when patches
        # are large), and the per-token position embedding already tells cells within an upsampled block apart.
        n = len(self.cond_shapes)
        self.cond_proj = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c, _, _ in self.cond_shapes)
        self.cond_pos = nn.Parameter(torch.zeros(n, num_patches, dim))
        # Redundant with a per-level position table in exact arithmetic, but gives all of a level's tokens one
        # shared direction from the start, so levels are distinguishable before the positions are learned.
        self.cond_type = nn.Parameter(torch.zeros(n, 1, dim))
        self.cond_null = nn.Parameter(torch.zeros(n, 1, dim))

        blk = dict(dim=dim, heads=heads, mlp_ratio=mlp_ratio)
        self.in_blocks = nn.ModuleList(Block(**blk) for _ in range(depth // 2))
        self.mid_block = Block(**blk)
        self.out_blocks = nn.ModuleList(Block(**blk, skip=True) for _ in range(depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch_size ** 2 * C)
        # U-ViT's 3x3 conv smooths the seams between independently decoded patches.
        self.final_layer = nn.Conv2d(C, C, 3, padding=1) if conv else nn.Identity()

        for p in (self.pos_embed, self.cond_pos, self.cond_type, self.cond_null):
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

    def cond_tokens(self, conds, cond_drop):
        if len(conds) != len(self.cond_shapes):
            raise ValueError(f"expected {len(self.cond_shapes)} conditions {self.cond_shapes}, got {len(conds)}")
        tokens = []
        for k, z in enumerate(conds):
            tok = self.cond_proj[k](to_grid(z, self.grid)).flatten(2).transpose(1, 2)
            if cond_drop is not None:
                # torch.where, not a multiply: a dropped sample must not see the values (nor pass gradients).
                tok = torch.where(cond_drop[:, None, None], self.cond_null[k].to(tok.dtype), tok)
            tokens.append(tok + self.cond_pos[k] + self.cond_type[k])
        return tokens

    def forward(self, x, t, conds=(), labels=None, cond_drop=None):
        B = x.shape[0]
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
        # Condition tokens go first; the image tokens are the last num_patches, read back after the blocks.
        x = torch.cat(self.cond_tokens(conds, cond_drop) + [x], dim=1)

        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())

        x = self.decoder_pred(self.norm(x))[:, -self.grid[0] * self.grid[1]:]
        p, (C, H, W) = self.patch_size, self.in_shape
        x = x.reshape(B, *self.grid, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, H, W)
        return self.final_layer(x)
