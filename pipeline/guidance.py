"""Classifier-free guidance, U-ViT's convention: eps = eps_cond + w * (eps_cond - eps_uncond).

w = 0 is plain conditional sampling. The unconditional pass (conditions and label dropped together, as training
drops them) runs only where a level's weight is on and it has something to drop: coarser latents, or a label.
Sampling follows this rule and the cost table counts by it.
"""
from __future__ import annotations


def runs_unconditional(weight: float, conditioned: bool, labelled: bool) -> bool:
    """Whether sampling a level also runs the unconditional pass."""
    return weight != 0 and (conditioned or labelled)


def guide(cond, uncond, weight: float):
    """The guided prediction from the conditional and the unconditional ones."""
    return cond + weight * (cond - uncond)
