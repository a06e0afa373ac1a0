"""Train one level's denoiser: ``python -m pipeline.train --config CFG --level L [--home DIR]``.

Runs by hand, under ``torchrun`` (DDP: NCCL on GPU, gloo on CPU) and as a Dagster Pipes subprocess (the
``level_<l>_model`` asset launches it): with Pipes, the loss is logged as it falls and the final metadata is
reported back. Training resumes from the last checkpoint of the same fingerprint after a kill.

Loss (paper eq. 4): || eps - D(alpha_t z_l + sigma_t eps, z_hat_{>l}, t) ||^2 with z_hat_k = z_k + sigma_k * n,
n ~ N(0, I) drawn fresh every step. For classifier-free guidance a sample's conditions and label are dropped
together with probability p_uncond: sampling's unconditional pass drops both, so it is trained on p_uncond of the
samples (two independent masks would train it on p_uncond^2: 1% at 0.1).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import Config, load_config, nested_home
from .data import LevelData, load_level_data
from .plan import Stage, build_plan
from .plots import line_plot


class Reporter:
    """Where progress goes: stdout by default, Dagster Pipes when launched by the asset."""

    def __init__(self, pipes=None):
        self.pipes = pipes

    def log(self, msg: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(msg)
        else:
            print(msg, flush=True)


def step_generator(seed: int, level: int, rank: int, step: int) -> torch.Generator:
    """Randomness of one step derived from its coordinates: a resumed run draws what the killed one would have."""
    state = np.random.SeedSequence([seed, level, rank, step]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def ema_with_warmup(decay: float):
    """EMA update with diffusers' warm-up, decay_n = min(decay, (1 + n) / (10 + n)): a short run's average is
    not dominated by its first, untrained weights (with a fixed 0.999, 22% of a 1,500-step EMA is step 0)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


def drop_mask(batch: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=g) < p


def model_spec(cfg: Config, level: int, data: LevelData, num_classes: int) -> dict:
    tc = cfg.train_config(level)
    return {"backbone": tc.backbone, "size": tc.size, "in_shape": list(data.x.shape[1:]),
            "cond_shapes": [list(c.shape[1:]) for c in data.conds], "num_classes": num_classes,
            "patch_size": tc.patch_size}


def build_model(spec: dict) -> torch.nn.Module:
    from models.denoiser import build_denoiser

    return build_denoiser(spec["backbone"], spec["size"], tuple(spec["in_shape"]),
                          [tuple(s) for s in spec["cond_shapes"]], spec["num_classes"], spec["patch_size"])


def noise_scheduler(cfg: Config, level: int):
    from diffusers import DDPMScheduler

    tc = cfg.train_config(level)
    return DDPMScheduler(num_train_timesteps=tc.num_train_timesteps, beta_schedule=tc.beta_schedule,
                         prediction_type=tc.prediction, clip_sample=False)


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU does bfloat16 in hardware (AVX512-BF16 or AMX); None where /proc/cpuinfo is absent.
    Without it oneDNN emulates bf16: measured here on an AVX2 EPYC, a unet-tiny step took 10.0 s in bf16
    autocast against 0.73 s in float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bfloat16 where the hardware computes it natively, float32 where it would be emulated."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


def train_level(cfg: Config, level: int, home: Path, reporter: Reporter | None = None) -> dict:
    """Train level `level` unless an intact model exists; its metadata, with `cache` 'hit' or 'miss'.

    One process trains a fingerprint at a time: a second one waits for the first's lock, then reads its model.
    Under torchrun the launching asset holds that lock, since the ranks must not wait on each other.
    """
    reporter = reporter or Reporter()
    plan = build_plan(cfg, home)
    stage: Stage = plan[f"level_{level}_model"]
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    with stage.artifact.lock(reporter.log) if single else nullcontext():
        if stage.artifact.reusable(reporter.log) if single else stage.artifact.is_complete():
            reporter.log(f"level {level} model already trained: {stage.path}")
            return {**stage.artifact.metadata(), "cache": "hit"}
        meta = _train(cfg, level, plan, stage, reporter)
        return {**meta, "cache": "miss"} if meta is not None else None  # ranks > 0 publish nothing


def _train(cfg: Config, level: int, plan: dict[str, Stage], stage: Stage, reporter: Reporter) -> dict:
    began = time.perf_counter()
    rank, world = _dist()
    device = _device(rank)
    tc = cfg.train_config(level)
    work = stage.path.parent / f"{stage.fingerprint}.work"
    precision = resolve_precision(tc.precision, device)
    if tc.precision == "bfloat16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        reporter.log(f"warning: level {level} trains in bfloat16 on a CPU without AVX512-BF16 or AMX, where bf16 "
                     f"is emulated and many times slower than float32: set precision: float32 for this machine")

    data = load_level_data(cfg, plan, level)
    num_classes = int(data.labels.max()) + 1 if cfg.class_conditional else 0
    spec = model_spec(cfg, level, data, num_classes)
    torch.manual_seed(cfg.training_seed)  # same initial weights on every rank
    model = build_model(spec).to(device)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(tc.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    sched = noise_scheduler(cfg, level)
    sigmas = [cfg.level(k).sigma for k in cfg.conditions_of(level)]

    start, curve, resumed_from = 0, [], None
    ckpt = latest_checkpoint(work)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, opt)
        start, curve, resumed_from = state["step"], [tuple(p) for p in state["curve"]], state["step"]
        reporter.log(f"resuming level {level} from {ckpt.name} (step {start})")
    # find_unused_parameters: the null-condition tokens get no gradient in a batch where nothing was dropped
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model

    from .costs import model_cost

    params, gflops = model_cost(tc, tuple(spec["in_shape"]), [tuple(s) for s in spec["cond_shapes"]], num_classes)
    reporter.log(f"level {level}: {spec['backbone']}-{spec['size']} {params / 1e6:.2f}M params, {gflops:.3f} "
                 f"GFLOPs/forward, {len(data)} samples, steps {start}->{tc.steps}, world {world}, {precision}")

    per_rank = max(1, tc.batch_size // world)
    x_all, conds_all, labels_all = data.x.to(device), [c.to(device) for c in data.conds], data.labels.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    model.train()
    t0, timed_steps, window = None, 0, []
    for step in range(start, tc.steps):
        g = step_generator(cfg.training_seed, level, rank, step)
        idx = torch.randint(0, len(data), (per_rank,), generator=g).to(device)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, tc.num_train_timesteps, (per_rank,), generator=g).to(device)
        xt = sched.add_noise(x0, noise, t)
        target = noise if tc.prediction == "epsilon" else sched.get_velocity(x0, noise, t)
        conds = [c[idx] + s * torch.randn(c[idx].shape, generator=g).to(device) for c, s in zip(conds_all, sigmas)]
        drop = drop_mask(per_rank, tc.p_uncond, g).to(device)  # conditions and label together
        labels = torch.where(drop, num_classes, labels_all[idx]) if num_classes else None
        for group in opt.param_groups:
            group["lr"] = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        with autocast:
            pred = net(xt, t, conds, labels, drop)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        # One non-finite loss poisons the weights and the EMA for good: stop before opt.step(), with nothing
        # published. Under DDP every rank decides on the same summed value, so none is left waiting.
        seen = loss.detach().clone()
        if world > 1:
            dist.all_reduce(seen)
        if not torch.isfinite(seen):
            raise FloatingPointError(
                f"level {level} diverged: loss is {seen.item()} at step {step + 1}/{tc.steps} (nothing was published). "
                f"Try a lower lr (now {tc.lr}) or more warmup_steps, check the level's data and conditions for "
                f"NaN/inf, or train in precision: float32 (now {precision}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        ema.update_parameters(model)
        window.append(loss.item())
        if step == start + 2:  # the first steps pay for allocation and warm-up
            t0, timed_steps = time.perf_counter(), 0
        elif t0 is not None:
            timed_steps += 1
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            curve.append((done, float(np.mean(window))))
            window = []
            if rank == 0:
                reporter.log(f"level {level} step {done}/{tc.steps} loss {curve[-1][1]:.4f}")
        if rank == 0 and (done % tc.checkpoint_every == 0 and done < tc.steps):
            save_checkpoint(work, done, model, ema, opt, {"curve": curve})
    sec_per_step = (time.perf_counter() - t0) / timed_steps if t0 is not None and timed_steps else None

    meta = None
    if rank == 0:
        with stage.artifact.build() as (tmp, meta):
            from safetensors.torch import save_file

            save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
            save_file({k: v.contiguous().clone() for k, v in ema.module.state_dict().items()}, str(tmp / "ema.safetensors"))
            (tmp / "model.json").write_text(json.dumps({**spec, "train": tc.model_dump(mode="json"),
                                                        "condition_levels": cfg.conditions_of(level),
                                                        "condition_sigmas": sigmas}, indent=1))
            if curve:
                line_plot(*zip(*curve), tmp / "loss.png", f"level {level} ({spec['backbone']}-{spec['size']})",
                          "step", "loss", logy=True)
            meta.update(level=level, steps=tc.steps, resumed_from_step=resumed_from, params=params,
                        gflops_per_forward=gflops, sec_per_step=sec_per_step, world_size=world,
                        samples_per_sec=(tc.batch_size / sec_per_step) if sec_per_step else None,
                        loss_curve=curve, final_loss=curve[-1][1] if curve else None, num_samples=len(data),
                        condition_levels=cfg.conditions_of(level), device=str(device), precision=precision,
                        seconds=round(time.perf_counter() - began, 1))
        shutil.rmtree(work, ignore_errors=True)
        meta = stage.artifact.metadata()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return meta


def load_level_model(model_dir: Path, use_ema: bool = True) -> tuple[torch.nn.Module, dict]:
    """A trained level's denoiser (EMA weights by default) and its spec, from safetensors only."""
    from safetensors.torch import load_file

    spec = json.loads((Path(model_dir) / "model.json").read_text())
    model = build_model(spec)
    model.load_state_dict(load_file(str(Path(model_dir) / ("ema.safetensors" if use_ema else "model.safetensors"))))
    return model.eval(), spec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="experiment YAML or resolved JSON (default: $NESTED_CONFIG)")
    ap.add_argument("--level", type=int, required=True)
    ap.add_argument("--home", help="artifact root (default: $NESTED_HOME or .nested/)")
    args = ap.parse_args(argv)
    if args.config and args.config.endswith(".json"):  # written by the asset from a config validated at load
        cfg = Config.model_validate_json(Path(args.config).read_text())
    else:
        cfg = load_config(args.config)
    home = Path(args.home) if args.home else nested_home()
    if not 0 <= args.level < cfg.num_levels:
        raise SystemExit(f"--level must be in 0..{cfg.num_levels - 1} for '{cfg.name}'")
    if "DAGSTER_PIPES_CONTEXT" in os.environ and int(os.environ.get("RANK", "0")) == 0:
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            meta = train_level(cfg, args.level, home, Reporter(pipes))
            pipes.report_asset_materialization(metadata=pipes_metadata(meta), data_version=meta["fingerprint"])
    else:
        train_level(cfg, args.level, home)


def pipes_metadata(meta: dict) -> dict:
    keep = ("cache", "level", "steps", "params", "gflops_per_forward", "sec_per_step", "samples_per_sec", "final_loss",
            "resumed_from_step", "world_size", "num_samples", "device", "precision")
    out = {k: meta[k] for k in keep if meta.get(k) is not None}
    out["loss_curve"] = {"raw_value": meta.get("loss_curve", []), "type": "json"}
    return out


if __name__ == "__main__":
    main()
