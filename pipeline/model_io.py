"""A level's denoiser on disk: ``model.safetensors``, ``ema.safetensors`` and ``model.json`` (its spec).

The spec says how to rebuild the network (backbone, size, shapes, classes, patch size), how it was trained
(``train``, the conditions and their sigmas) and its noise schedule (``scheduler``): the one schedule that
training adds noise with and that every sampler of that model is built from.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from safetensors.torch import load_file, save_file

from models.denoiser import build_denoiser

from .schema import Config, TrainConfig

MODEL_JSON = "model.json"
WEIGHTS = {True: "ema.safetensors", False: "model.safetensors"}  # use_ema -> file


def model_spec(cfg: Config, level: int, in_shape, cond_shapes, num_classes: int) -> dict:
    """Everything model.json holds for level `level`'s denoiser, given its data's shapes."""
    tc = cfg.train_config(level)
    return {"backbone": tc.backbone, "size": tc.size, "in_shape": list(in_shape),
            "cond_shapes": [list(s) for s in cond_shapes], "num_classes": num_classes, "patch_size": tc.patch_size,
            "train": tc.model_dump(mode="json"), "condition_levels": cfg.conditions_of(level),
            "condition_sigmas": [cfg.level(k).sigma for k in cfg.conditions_of(level)],
            "scheduler": scheduler_config(tc)}


def scheduler_config(tc: TrainConfig | dict) -> dict:
    """The noise schedule of a level's training settings (a TrainConfig, or its JSON in an older model.json)."""
    t = tc.model_dump(mode="json") if isinstance(tc, TrainConfig) else tc
    return {"num_train_timesteps": t["num_train_timesteps"], "beta_schedule": t["beta_schedule"],
            "prediction_type": t["prediction"]}


def spec_scheduler(spec: dict) -> dict:
    # model.json files written before the schedule was saved in them derive it from their training settings.
    return spec.get("scheduler") or scheduler_config(spec["train"])


def make_scheduler(schedule: dict, kind: str = "ddpm", thresholding: bool = False):
    """A diffusers scheduler on `schedule` (scheduler_config's keys): ddpm (training's, and a sampler), ddim or dpm."""
    if kind == "dpm":
        return DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", thresholding=thresholding)
    if kind == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, thresholding=thresholding)
    if kind == "ddpm":
        return DDPMScheduler(**schedule, clip_sample=False, thresholding=thresholding)
    raise ValueError(f"unknown sampler '{kind}': choose dpm, ddim or ddpm")


def build_model(spec: dict) -> torch.nn.Module:
    return build_denoiser(spec["backbone"], spec["size"], tuple(spec["in_shape"]),
                          [tuple(s) for s in spec["cond_shapes"]], spec["num_classes"], spec["patch_size"])


def save_model(out_dir: Path, model: torch.nn.Module, ema: torch.nn.Module, spec: dict) -> None:
    for module, use_ema in ((model, False), (ema, True)):
        # safetensors refuses shared storage: tied weights get their own copy
        save_file({k: v.contiguous().clone() for k, v in module.state_dict().items()}, str(out_dir / WEIGHTS[use_ema]))
    (out_dir / MODEL_JSON).write_text(json.dumps(spec, indent=1))


def read_spec(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / MODEL_JSON).read_text())


def load_level_model(model_dir: Path, use_ema: bool = True,
                     device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """A trained level's denoiser (EMA weights by default) on `device`, and its spec, from safetensors only."""
    spec = read_spec(model_dir)
    model = build_model(spec)
    model.load_state_dict(load_file(str(Path(model_dir) / WEIGHTS[use_ema])))
    return model.to(device).eval(), spec
