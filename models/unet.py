"""Conv UNet denoiser: diffusers' UNet2DModel with the coarser levels entering twice.

1. Cascaded-diffusion style (Ho et al. 2021): each condition latent is resized to the target's H x W and stacked
   onto the noisy input, plus one indicator channel (1 = conditions present, 0 = dropped for classifier-free
   guidance): the condition is seen at every pixel from the first layer.
2. At every resolution: the flattened conditions go through an MLP into the time-embedding space and are added
   to the timestep embedding (UNet2DModel's "identity" class embedding), which every ResNet block applies as
   AdaGN scale and shift (ADM's label conditioning). A 4x4x32 semantic latent is mostly global content, which
   a few input channels at 16x16 pass on poorly to the deep, low-resolution layers that decide it.
Labels use the same path (an embedding added to the time embedding). Same call signature as models.uvit.UViT.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from models.uvit import to_grid

# attn flags the resolutions (finest first) that get self-attention; the mid-block always has it.
UNET_SIZES = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, attn=(False, True), norm_num_groups=8,
                 attention_head_dim=32),
    # Attention only at the lowest resolution: 8x8 for 32x32 pixels, cheap enough for a CPU.
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=2, attn=(False, False, True),
                  norm_num_groups=32, attention_head_dim=64),
    # DDPM's CIFAR-10 network: attention at the 16x16 resolution of a 32x32 input.
    "base": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, attn=(False, True, False, False),
                 norm_num_groups=32, attention_head_dim=64),
}


class CondUNet(nn.Module):
    """Denoiser for one level: x (B, C, H, W) at timestep t, conditioned on coarser latents and a label.

    conds[k] has shape (B, *cond_shapes[k]); cond_drop (B,) bool zeroes a sample's condition channels and its
    indicator. With num_classes > 0, label num_classes is the null label; labels=None means null for all.
    """

    def __init__(self, in_shape, cond_shapes=(), num_classes: int = 0, block_out_channels=(64, 128, 128),
                 layers_per_block: int = 2, attn=(False, False, True), norm_num_groups: int = 32,
                 attention_head_dim: int = 64):
        from diffusers import UNet2DModel  # imported here: it costs seconds, and config validation reads UNET_SIZES

        super().__init__()
        C, H, W = in_shape
        factor = 2 ** (len(block_out_channels) - 1)
        if H % factor or W % factor:
            raise ValueError(f"a UNet with {len(block_out_channels)} resolutions needs H and W divisible by "
                             f"{factor}; got {H}x{W} (use a smaller size or the uvit backbone)")
        self.in_shape, self.cond_shapes = tuple(in_shape), [tuple(s) for s in cond_shapes]
        self.num_classes = num_classes
        # No indicator without conditions: a constant channel would carry nothing.
        cond_ch = sum(c for c, _, _ in self.cond_shapes) + (1 if self.cond_shapes else 0)
        temb = 4 * block_out_channels[0]  # UNet2DModel's time-embedding width
        flat = sum(c * h * w for c, h, w in self.cond_shapes)
        self.cond_embed = nn.Sequential(nn.Linear(flat, temb), nn.SiLU(), nn.Linear(temb, temb)) if flat else None
        self.cond_null = nn.Parameter(torch.zeros(temb)) if flat else None
        self.label_emb = nn.Embedding(num_classes + 1, temb) if num_classes > 0 else None
        self.unet = UNet2DModel(
            sample_size=(H, W), in_channels=C + cond_ch, out_channels=C,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim,
            # Scale/shift time conditioning (ADM's AdaGN) beat the added bias in Dhariwal & Nichol's ablation.
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity" if flat or num_classes > 0 else None,
        )

    def forward(self, x, t, conds=(), labels=None, cond_drop=None):
        B, _, H, W = x.shape
        if len(conds) != len(self.cond_shapes):
            raise ValueError(f"expected {len(self.cond_shapes)} conditions {self.cond_shapes}, got {len(conds)}")
        extra = None  # added to the time embedding: AdaGN at every resolution
        if conds:
            present = torch.ones(B, 1, H, W, dtype=x.dtype, device=x.device)
            if cond_drop is not None:
                # torch.where, not a multiply (NaN * 0 is NaN): dropped values reach neither the output nor the
                # MLP's weight gradients; the indicator and the null embedding say "dropped".
                drop = cond_drop[:, None, None, None]
                conds = [torch.where(drop, torch.zeros_like(z), z) for z in conds]
                present = torch.where(drop, torch.zeros_like(present), present)
            c = torch.cat([to_grid(z, (H, W)).to(x.dtype) for z in conds] + [present], dim=1)
            extra = self.cond_embed(torch.cat([z.flatten(1).to(x.dtype) for z in conds], dim=1))
            if cond_drop is not None:
                extra = torch.where(cond_drop[:, None], self.cond_null.to(extra.dtype), extra)
            x = torch.cat([x, c], dim=1)
        if self.num_classes > 0:
            if labels is None:
                labels = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            y = self.label_emb(labels)
            extra = y if extra is None else extra + y
        elif labels is not None:
            raise ValueError("labels given to a model built with num_classes=0")
        t = t.expand(B) if t.ndim == 0 else t
        return self.unet(x, t, class_labels=extra, return_dict=False)[0]
