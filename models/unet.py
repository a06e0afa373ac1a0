"""Conv UNet denoiser: diffusers' UNet2DModel with coarser levels concatenated as channels.

Cascaded-diffusion style (Ho et al. 2021): each condition latent is resized to the target's H x W and stacked
onto the noisy input, plus one indicator channel (1 = conditions present, 0 = dropped for classifier-free
guidance). A conv net sees the condition at every pixel from the first layer, which is why it learns to use
it much faster than the transformer at small scale. Same call signature as models.uvit.UViT.
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
        self.unet = UNet2DModel(
            sample_size=(H, W), in_channels=C + cond_ch, out_channels=C,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim,
            # Scale/shift time conditioning (ADM's AdaGN) beat the added bias in Dhariwal & Nichol's ablation.
            resnet_time_scale_shift="scale_shift",
            num_class_embeds=num_classes + 1 if num_classes > 0 else None,
        )

    def forward(self, x, t, conds=(), labels=None, cond_drop=None):
        B, _, H, W = x.shape
        if len(conds) != len(self.cond_shapes):
            raise ValueError(f"expected {len(self.cond_shapes)} conditions {self.cond_shapes}, got {len(conds)}")
        if conds:
            present = torch.ones(B, 1, H, W, dtype=x.dtype, device=x.device)
            c = torch.cat([to_grid(z, (H, W)).to(x.dtype) for z in conds] + [present], dim=1)
            if cond_drop is not None:
                # torch.where, not a multiply: dropped values must not leak through (NaN * 0 is NaN).
                c = torch.where(cond_drop[:, None, None, None], torch.zeros_like(c), c)
            x = torch.cat([x, c], dim=1)
        if self.num_classes > 0 and labels is None:
            labels = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
        elif self.num_classes == 0 and labels is not None:
            raise ValueError("labels given to a model built with num_classes=0")
        t = t.expand(B) if t.ndim == 0 else t
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]
