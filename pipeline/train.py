"""Train one level's denoiser: the models stage (`train`, the loop) and its driver (`train_level`).

Runs by hand (``python -m pipeline.train_cli``), under ``torchrun`` and on an engine's process group (Ray Train;
DDP: NCCL on GPU, gloo on CPU); the ``level_<l>_model`` asset runs the same `train_level` in a process of its own
(assets/train_entry.py). A killed run resumes from the last checkpoint of the same fingerprint. A run with more
steps than a published one of the same settings (its `trajectory`) continues it: a step's batch, noise and learning
rate depend on the step alone, so 3000 steps then 3000 more are the 6000-step run (bit for bit from an in-memory
split; a streamed split's shuffle is reseeded at the step, as on resuming). The batches come from
pipeline/loader.py: the split in memory, or streamed from its shards (compute.loader), on every path.

Loss (paper eq. 4): || eps - D(alpha_t z_l + sigma_t eps, z_hat_{>l}, t) ||^2 with z_hat_k = z_k + sigma_k * n,
n ~ N(0, I) drawn fresh every step. For classifier-free guidance a sample's conditions and label are dropped
together with probability p_uncond: sampling's unconditional pass drops both, so it is trained on p_uncond of the
samples (two independent masks would train it on p_uncond^2: 1% at 0.1).
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from .checkpoint import (OPTIMIZER, latest_checkpoint, load_checkpoint, load_published_run, longest_shorter_run,
                         save_checkpoint)
from .costs import model_cost
from .engine import LocalEngine
from .loader import stream_seed, training_batches
from .model_io import build_model, make_scheduler, model_spec, save_model
from .plots import line_plot
from .runtime import close_distributed, cpu_has_native_bf16, device_for, init_distributed, resolve_precision, world_size
from .schema import Config
from .stage import Stage

GROUP_RESULT = "_group_train.json"  # rank 0's metadata, handed from an engine's worker to the driver inside the build


def train_level(cfg: Config, plan: dict[str, Stage], level: int, log: Callable[[str], None] = print,
                engine=None) -> dict | None:
    """Train level `level` unless an intact model exists; its metadata, with `cache` 'hit' or 'miss'.

    One process trains a fingerprint at a time: a second one waits for the first's lock, then reads its model.
    On a distributed engine this process is the driver and the engine's process group trains (`train_on_group`).
    Under torchrun the launching asset holds that lock, since the ranks must not wait on each other; rank 0
    publishes the model and the other ranks return None.
    """
    stage, engine = plan[f"level_{level}_model"], engine or LocalEngine()
    if engine.distributed:
        meta, hit = stage.artifact.materialize(lambda out: train_on_group(cfg, plan, level, out, engine, log), log)
    elif world_size() == 1:
        meta, hit = stage.artifact.materialize(lambda out: train(cfg, plan, out, log, level=level), log)
    elif stage.artifact.is_complete():  # the launcher found it missing or damaged; another run finished it since
        meta, hit = stage.artifact.metadata(), True
    else:
        rank, _ = init_distributed()
        if rank == 0:
            with stage.artifact.build() as (out, meta):
                meta.update(train(cfg, plan, out, log, level=level))
        else:
            train(cfg, plan, None, log, level=level)
        close_distributed()
        if rank != 0:
            return None
        meta, hit = stage.artifact.metadata(), False
    if not hit:
        shutil.rmtree(work_dir(stage), ignore_errors=True)  # the checkpoints: the model is published
    return {**meta, "cache": "hit" if hit else "miss"}


def train_on_group(cfg: Config, plan: dict[str, Stage], level: int, out_dir: Path, engine,
                   log: Callable[[str], None] = print) -> dict:
    """The models stage of one level on the engine's process group (`train.nproc` workers); rank 0 writes the model
    into out_dir (the build's temp dir, published by the caller's `materialize`, which holds the fingerprint's
    lock for the whole run)."""
    stage = plan[f"level_{level}_model"]
    # The workers read the level's data in processes of their own: verified here first, so a damaged input fails
    # before the cluster is asked for anything, and recorded as this build's inputs.
    for name in stage.inputs:
        plan[name].artifact.require()
    world = cfg.train_config(level).nproc
    log(f"level {level}: {world} {engine.name} training workers")
    engine.run_group(train_worker, {"cfg": cfg, "plan": plan, "level": level, "out_dir": str(out_dir),
                                    "engine": engine.name}, world,
                     f"level_{level}_model-{stage.fingerprint}", stage.artifact.home / f".{engine.name}")
    result = out_dir / GROUP_RESULT
    meta = json.loads(result.read_text())
    result.unlink()
    return meta


def train_worker(config: dict) -> None:
    """One worker of an engine's process group: `train` as under torchrun (the engine joined the process group)."""
    out_dir = Path(config["out_dir"])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    meta = train(config["cfg"], config["plan"], out_dir if rank == 0 else None, level=config["level"])
    if rank == 0:
        (out_dir / GROUP_RESULT).write_text(json.dumps({**meta, "engine": config["engine"]}))


def train(cfg: Config, plan: dict[str, Stage], out_dir: Path | None, log: Callable[[str], None] = print, *,
          level: int) -> dict | None:
    """The models stage: train level `level`'s denoiser and write it into out_dir; its metadata.

    Under torchrun every rank trains and rank 0 alone writes (the other ranks pass out_dir None, get None).
    """
    began = time.perf_counter()
    tc = cfg.train_config(level)

    # -- setup: process, data, model, EMA, optimizer, noise schedule
    rank, world = init_distributed(cfg.compute.device)
    device = device_for(rank, cfg.compute.device)
    precision = resolve_precision(tc.precision, device)
    if tc.precision == "bfloat16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        log(f"warning: level {level} trains in bfloat16 on a CPU without AVX512-BF16 or AMX, where bf16 "
            f"is emulated and many times slower than float32: set precision: float32 for this machine")
    per_rank = max(1, tc.batch_size // world)
    # in memory or streamed (pipeline/loader.py: compute.loader, by the split's size against the memory budget)
    data, loader_meta = training_batches(cfg, plan, level, per_rank, device, rank, world, log)
    num_classes = data.num_classes if cfg.class_conditional else 0
    shape = data.shape  # the level's data; a target transform's state (matryoshka's) is the backbone's business
    spec = model_spec(cfg, level, shape, data.cond_shapes, num_classes)
    spec.update(data.target)  # how sampling undoes level 0's target transforms (pipeline.level_kinds.finish_sample)
    torch.manual_seed(cfg.training_seed)  # same initial weights on every rank
    model = build_model(spec).to(device)
    ema = AveragedModel(model, use_buffers=True)  # the store of the average; update_ema() updates it
    # fused: one kernel for the whole update on a GPU; the CPU keeps the default path (and its recorded results)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay,
                            fused=device.type == "cuda")
    sched = make_scheduler(spec["scheduler"])
    sigmas = spec["condition_sigmas"]

    # -- resume from the last checkpoint of this fingerprint, if a run was killed; else continue the longest
    # shorter run of the same settings, if one is published (its steps are this run's first ones, drawn alike)
    stage = plan[f"level_{level}_model"]
    work = work_dir(stage)
    start, curve, resumed_from, continued_from = 0, [], None, None
    ckpt = latest_checkpoint(work)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, opt)
        start, curve, resumed_from = state["step"], [tuple(p) for p in state["curve"]], state["step"]
        log(f"resuming level {level} from {ckpt.name} (step {start})")
    elif (shorter := longest_shorter_run(stage, tc.steps)) is not None:
        state = load_published_run(shorter, model, ema, opt)
        start, curve = state["steps"], [tuple(p) for p in state["loss_curve"]]
        continued_from = {"fingerprint": shorter.fingerprint, "steps": start,
                          "seconds": (state.get("continued_from") or {}).get("seconds", 0) + state["seconds"]}
        log(f"level {level}: continuing the published {start}-step run {shorter.fingerprint} to {tc.steps} steps")
    # find_unused_parameters: the null-condition tokens get no gradient in a batch where nothing was dropped
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world > 1 else model
    compiled = use_compile(cfg.compute.compile, device)
    if compiled:
        # static shapes: a level's batch never changes, and inductor's dynamic-shape kernels for this model failed
        # on torch 2.11 (H200) after one process had compiled another level's shapes
        net = torch.compile(net, dynamic=False)  # checkpoints and the published weights come from `model`

    params, gflops = model_cost(tc, tuple(spec["in_shape"]), [tuple(s) for s in spec["cond_shapes"]], num_classes)
    log(f"level {level}: {spec['backbone']}-{spec['size']} {params / 1e6:.2f}M params, {gflops:.3f} "
        f"GFLOPs/forward, {data.num_samples} samples, steps {start}->{tc.steps}, world {world}, {precision}"
        f"{', compiled' if compiled else ''}")

    # -- train
    data.begin(stream_seed(cfg.training_seed, level, start))  # a streamed split: a resumed run reseeds from its step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    model.train()
    # On a GPU nothing in a step waits for the GPU: the step's random draws are made there, and the losses are read
    # back (and checked for inf/NaN) only every log_every steps and before a checkpoint. On the CPU, where waiting
    # costs nothing, every step is checked, so a divergence stops before its own optimizer step.
    check_every = 1 if device.type == "cpu" else tc.log_every
    t0, timed_steps, window, unchecked = None, 0, [], []
    for step in range(start, tc.steps):
        # The step's batch (in memory: its indices), noise, timesteps, condition noise and dropout, all drawn from the
        # step's own generator.
        g = step_generator(cfg.training_seed, level, rank, step, device)
        x0, clean_conds, batch_labels = data.batch(g)
        noise = torch.randn(x0.shape, generator=g, device=g.device).to(device)
        t = torch.randint(0, tc.num_train_timesteps, (per_rank,), generator=g, device=g.device).to(device)
        xt = sched.add_noise(x0, noise, t)
        target = noise if tc.prediction == "epsilon" else sched.get_velocity(x0, noise, t)
        conds = [c + s * torch.randn(c.shape, generator=g, device=g.device).to(device)
                 for c, s in zip(clean_conds, sigmas)]
        drop = drop_mask(per_rank, tc.p_uncond, g).to(device)  # conditions and label together
        labels = torch.where(drop, num_classes, batch_labels) if num_classes else None

        for group in opt.param_groups:  # linear warm-up
            group["lr"] = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        with autocast:
            pred = net(xt, t, conds, labels, drop)
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        done = step + 1
        unchecked.append(loss.detach())
        # One non-finite loss poisons the weights and the EMA for good: stop with nothing published (checks come
        # before every checkpoint and the end). Under DDP every rank decides on the same summed values.
        if done % check_every == 0 or done % tc.log_every == 0 or done % tc.checkpoint_every == 0 or done == tc.steps:
            losses = torch.stack(unchecked)
            seen = losses.clone()
            if world > 1:
                dist.all_reduce(seen)
            seen = seen.tolist()
            if not np.all(np.isfinite(seen)):
                bad = next(i for i, v in enumerate(seen) if not np.isfinite(v))
                raise FloatingPointError(
                    f"level {level} diverged: loss is {seen[bad]} at step {done - len(seen) + bad + 1}/{tc.steps} "
                    f"(nothing was published). Try a lower lr (now {tc.lr}) or more warmup_steps, check the level's "
                    f"data and conditions for NaN/inf, or train in precision: float32 (now {precision}).")
            window += losses.tolist()  # this rank's, as logged before
            unchecked = []
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        update_ema(ema, model, tc.ema_decay)

        # Bookkeeping: speed (after the first steps, which pay for allocation and warm-up), log, checkpoint.
        if step == start + 2:
            t0, timed_steps = time.perf_counter(), 0
        elif t0 is not None:
            timed_steps += 1
        if done % tc.log_every == 0 or done == tc.steps:
            curve.append((done, float(np.mean(window))))
            window = []
            if rank == 0:
                log(f"level {level} step {done}/{tc.steps} loss {curve[-1][1]:.4f}")
        if rank == 0 and (done % tc.checkpoint_every == 0 and done < tc.steps):
            save_checkpoint(work, done, model, ema, opt, {"curve": curve})
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the last steps' kernels belong to the timing
    sec_per_step = (time.perf_counter() - t0) / timed_steps if t0 is not None and timed_steps else None

    # -- publish (rank 0): the weights, the EMA weights, the spec and the loss curve
    if rank != 0:
        return None
    save_model(out_dir, model, ema.module, spec)
    torch.save(opt.state_dict(), out_dir / OPTIMIZER)  # what a longer run of these settings continues from
    if curve:
        line_plot(*zip(*curve), out_dir / "loss.png", f"level {level} ({spec['backbone']}-{spec['size']})",
                  "step", "loss", logy=True)
    return dict(level=level, steps=tc.steps, resumed_from_step=resumed_from, trajectory=stage.trajectory,
                continued_from=continued_from, params=params,
                gflops_per_forward=gflops, sec_per_step=sec_per_step, world_size=world,
                samples_per_sec=(tc.batch_size / sec_per_step) if sec_per_step else None,
                loss_curve=curve, final_loss=curve[-1][1] if curve else None, num_samples=data.num_samples,
                condition_levels=cfg.conditions_of(level), device=str(device), precision=precision, compiled=compiled,
                **loader_meta, seconds=round(time.perf_counter() - began, 1))


def work_dir(stage: Stage) -> Path:
    """Where a model's checkpoints live while it trains (beside its artifact, removed once it is published)."""
    return stage.path.parent / f"{stage.fingerprint}.work"


def step_generator(seed: int, level: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Randomness of one step derived from its coordinates: a resumed run draws what the killed one would have.
    On a GPU the generator lives there (the draws need no copy from host memory, which would wait for the GPU);
    a GPU's stream of numbers is not the CPU's, so a run resumed on the other kind of device draws others."""
    state = np.random.SeedSequence([seed, level, rank, step]).generate_state(1)[0]
    device = torch.device(device)
    return torch.Generator(device if device.type == "cuda" else "cpu").manual_seed(int(state))


def update_ema(ema: AveragedModel, model: torch.nn.Module, decay: float) -> None:
    """One EMA step with diffusers' warm-up, decay_n = min(decay, (1 + n) / (10 + n)): a short run's average is
    not dominated by its first, untrained weights (with a fixed 0.999, 22% of a 1,500-step EMA is step 0).
    The first update copies. AveragedModel.update_parameters would do the same but reads n from the GPU every
    step; n_averaged is a CPU buffer here, so nothing waits."""
    n = int(ema.n_averaged)
    pairs = zip(itertools.chain(ema.module.parameters(), ema.module.buffers()),
                itertools.chain(model.parameters(), model.buffers()))
    averaged, current = [], []
    with torch.no_grad():
        for a, c in pairs:
            if a.is_floating_point():
                averaged.append(a.detach())
                current.append(c.detach())
            else:
                a.copy_(c)  # a counter (BatchNorm's num_batches_tracked) has no average: it is copied
        # weight 1.0 copies exactly: lerp computes end - (end - start) * (1 - weight) for weights >= 0.5
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)) if n else 1.0)
    ema.n_averaged += 1


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """compute.compile: 'auto' compiles on a GPU (inductor's CPU code gains little on these small models and
    its first compile takes minutes on two cores); true or false force it."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def drop_mask(batch: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=g, device=g.device) < p
