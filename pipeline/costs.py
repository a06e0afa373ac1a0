"""Sampling cost of a nested model: parameters and GFLOPs per step of every level, against the L = 1 baseline.

The baseline is the level-0 denoiser with no coarser levels (plain diffusion, the paper's 27 GFLOPs); the nested
model adds the coarser levels' own denoisers and the level-0 model's condition inputs (the paper: 34 GFLOPs).
Two figures: GFLOPs per forward summed over the levels (the paper's convention), and GFLOPs to sample one image
(every level's forward times the steps, twice where classifier-free guidance runs the unconditional pass too).
Models are built on the "meta" device: shapes and FLOPs only, nothing is allocated.
"""
from __future__ import annotations

import torch

from models.denoiser import build_denoiser, count_params, gflops_per_step

from .config import load_config
from .guidance import runs_unconditional
from .level_kinds import level_shape
from .schema import Config


def model_cost(tc, in_shape, cond_shapes, num_classes: int = 0) -> tuple[int, float]:
    """(parameters, GFLOPs of one forward for one image) of the denoiser a TrainConfig describes."""
    with torch.device("meta"):
        model = build_denoiser(tc.backbone, tc.size, in_shape, cond_shapes, num_classes, tc.patch_size)
    return count_params(model), gflops_per_step(model, in_shape, cond_shapes, num_classes)


def guided(cfg: Config, level: int, conditions: list[int] | None = None) -> bool:
    """Whether sampling this level also runs the unconditional pass (pipeline/guidance.py's rule)."""
    conditions = cfg.conditions_of(level) if conditions is None else conditions
    return runs_unconditional(cfg.guidance()[level], bool(conditions), cfg.class_conditional)


def cost_table(cfg: Config, num_classes: int = 0) -> dict:
    """{"levels": [{level, backbone, size, shape, params, gflops_per_forward}], "baseline": {...}, totals}."""
    rows = []
    for level in range(cfg.num_levels):
        tc = cfg.train_config(level)
        conds = [level_shape(cfg, k) for k in cfg.conditions_of(level)]
        params, gflops = model_cost(tc, level_shape(cfg, level), conds, num_classes)
        rows.append({"level": level, "backbone": tc.backbone, "size": tc.size, "shape": list(level_shape(cfg, level)),
                     "conditions": cfg.conditions_of(level), "params": params, "gflops_per_forward": gflops})
    tc0 = cfg.train_config(0)
    base_params, base_gflops = model_cost(tc0, level_shape(cfg, 0), [], num_classes)
    total = sum(r["gflops_per_forward"] for r in rows)
    steps = cfg.sampling_steps()
    sampling = sum(steps[r["level"]] * r["gflops_per_forward"] * (2 if guided(cfg, r["level"]) else 1) for r in rows)
    base_sampling = cfg.sampling.steps * base_gflops * (2 if guided(cfg, 0, conditions=[]) else 1)
    return {"levels": rows, "baseline": {"params": base_params, "gflops_per_forward": base_gflops,
                                         "sampling_gflops_per_image": base_sampling},
            "total_gflops_per_forward": total, "total_params": sum(r["params"] for r in rows),
            "relative_to_baseline": total / base_gflops,
            "sampling_gflops_per_image": sampling, "sampling_relative_to_baseline": sampling / base_sampling}


def train_gflops(cfg: Config, num_classes: int = 0) -> float:
    """Training GFLOPs of every level together: steps x batch x 3 forwards (backward ~ 2 forwards, the usual
    convention), 2 FLOPs per multiply-add as flop_counter counts. A compute-matched L = 1 baseline gets this."""
    total = 0.0
    for level in range(cfg.num_levels):
        tc = cfg.train_config(level)
        conds = [level_shape(cfg, k) for k in cfg.conditions_of(level)]
        total += 3 * tc.steps * tc.batch_size * model_cost(tc, level_shape(cfg, level), conds, num_classes)[1]
    return total


def matched_steps(cfg: Config, num_classes: int = 0) -> int:
    """Level-0 steps that give an L = 1 baseline (same model, same batch) the training GFLOPs of `cfg`."""
    tc = cfg.train_config(0)
    base = 3 * tc.batch_size * model_cost(tc, level_shape(cfg, 0), [], num_classes)[1]
    return round(train_gflops(cfg, num_classes) / base)


def cost_markdown(table: dict) -> str:
    lines = ["| level | model | shape | conditioned on | params (M) | GFLOPs / forward |", "|---|---|---|---|---|---|"]
    for r in table["levels"]:
        lines.append(f"| {r['level']} | {r['backbone']}-{r['size']} | {'x'.join(map(str, r['shape']))} | "
                     f"{', '.join(map(str, r['conditions'])) or '-'} | {r['params'] / 1e6:.2f} | "
                     f"{r['gflops_per_forward']:.4f} |")
    b = table["baseline"]
    lines.append(f"| L = 1 baseline | level-0 model, no conditions | | | {b['params'] / 1e6:.2f} | "
                 f"{b['gflops_per_forward']:.4f} |")
    lines.append(f"\nOne forward of every level: {table['total_gflops_per_forward']:.4f} GFLOPs = "
                 f"**{table['relative_to_baseline']:.3f}x** the L = 1 baseline (the paper's convention). Sampling one "
                 f"image (steps x forwards, x2 where guidance runs the unconditional pass): "
                 f"{table['sampling_gflops_per_image']:.2f} GFLOPs = **{table['sampling_relative_to_baseline']:.3f}x** "
                 f"the baseline's {b['sampling_gflops_per_image']:.2f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(cost_markdown(cost_table(load_config())))
