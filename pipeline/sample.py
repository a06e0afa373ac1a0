"""Top-down sampling of the nested hierarchy: z_{L-1}, then each finer level given the generated coarser ones.

Guidance follows pipeline/guidance.py (U-ViT's convention); each level has its own weight w, decaying coarse to
fine in the paper.
As in training, the generated coarser latents get their own level's sigma noise before they condition.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import webdataset as wds
from PIL import Image
from torchvision.utils import make_grid, save_image

from .guidance import guide, runs_unconditional
from .ingest import read_manifest
from .level_kinds import finish_sample, level_kind, sampled_shape, thresholded
from .model_io import load_level_model, make_scheduler, spec_scheduler
from .progress import Progress
from .runtime import sampling_device
from .sample_shards import PATTERN as SHARD_PATTERN
from .schema import Config, SamplingPlan
from .stage import Stage
from .stats import ChannelStats


@torch.inference_mode()
def sample_level(model, spec: dict, conds: list[torch.Tensor], n: int, steps: int, guidance: float,
                 generator: torch.Generator, kind: str = "dpm", thresholding: bool = False,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    sched = make_scheduler(spec_scheduler(spec), kind, thresholding)
    sched.set_timesteps(steps)
    shape = sampled_shape(spec)  # a target transform's state (matryoshka's) or the level's data
    # The noise comes from the CPU generator wherever the model runs: a seed gives the same draws on a GPU.
    device = next(model.parameters()).device
    x = (torch.randn((n, *shape), generator=generator) * sched.init_noise_sigma).to(device)
    conds = [c.to(device) for c in conds]
    labels = labels.to(device) if labels is not None else None
    guided = runs_unconditional(guidance, bool(conds), labels is not None)
    for t in sched.timesteps:
        tt = torch.full((n,), int(t), dtype=torch.long, device=device)
        xin = sched.scale_model_input(x, t)
        out = model(xin, tt, conds, labels)
        if guided:
            null = torch.full_like(labels, spec["num_classes"]) if labels is not None else None
            out_u = model(xin, tt, conds, null, torch.ones(n, dtype=torch.bool, device=device))
            out = guide(out, out_u, guidance)
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x.cpu()


def sample_hierarchy(cfg: Config, plan: dict[str, Stage], n: int, seed: int = 0, sampling: SamplingPlan | None = None,
                     *, given: dict[int, torch.Tensor] | None = None, labels: torch.Tensor | None = None,
                     use_ema: bool = True) -> dict[int, torch.Tensor]:
    """Generate n samples of every level; returns {level: tensor}. Level 0 pixels are in [-1, 1].

    `given` fixes some coarse levels (each (n, ...)) instead of sampling them: the finer levels are then
    generated from those latents (the paper's Figure 1 shares one coarse latent across a row); `labels` as in
    HierarchySampler.
    """
    out: dict[int, list[torch.Tensor]] = {level: [] for level in range(cfg.num_levels)}
    for batch in iter_hierarchy(cfg, plan, n, seed, sampling, given=given, labels=labels, use_ema=use_ema):
        for level, z in batch.items():
            out[level].append(z)
    return {level: torch.cat(zs) for level, zs in out.items()}


def iter_hierarchy(cfg: Config, plan: dict[str, Stage], n: int, seed: int = 0, sampling: SamplingPlan | None = None,
                   *, given: dict[int, torch.Tensor] | None = None, labels: torch.Tensor | None = None,
                   use_ema: bool = True):
    """Yield {level: batch} for consecutive batches: only one batch is in memory (any N fits)."""
    sampler = HierarchySampler(cfg, plan, n, seed, sampling, given=given, labels=labels, use_ema=use_ema)
    yield from map(sampler, sampler.starts())


class HierarchySampler:
    """Top-down sampling of N images, one batch at a time: `sampler(start)` is the batch of samples start.. (with
    batch_size of `sampling`, default the config's). The models are loaded once, when it is built: an engine's
    worker (`pipeline.engine`) builds one and asks it for its share of the batches.

    A batch's randomness is its own (seed, start), so batches come out the same whoever draws them and in whatever
    order. `labels` (n,) fixes a class-conditional run's labels (e.g. those of the images `given` came from); by
    default they are drawn from the training set's label frequencies. A level 0 trained on a transformed target
    (MSF's residual, matryoshka's state) is finished as its kind says (pipeline/level_kinds.py).
    """

    def __init__(self, cfg: Config, plan: dict[str, Stage], n: int, seed: int = 0, sampling: SamplingPlan | None = None,
                 *, given: dict[int, torch.Tensor] | None = None, labels: torch.Tensor | None = None,
                 use_ema: bool = True):
        self.cfg, self.n, self.seed = cfg, n, seed
        self.sampling = sampling or cfg.sampling_plan()
        self.given, self.labels = given or {}, labels
        self.models = load_models(cfg, plan, use_ema, skip=self.given)
        self.classes = label_frequencies(plan) if cfg.class_conditional else None

    def starts(self) -> range:
        return range(0, self.n, self.sampling.batch_size)

    def __call__(self, start: int) -> dict[int, torch.Tensor]:
        cfg, how = self.cfg, self.sampling
        b = min(how.batch_size, self.n - start)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, start]).generate_state(1)[0]))
        # one label per sample, shared by every level, drawn as often as the training set has it
        y = torch.multinomial(self.classes, b, replacement=True, generator=g) if self.classes is not None else None
        if y is not None and self.labels is not None:
            y = self.labels[start:start + b]
        gen: dict[int, torch.Tensor] = {k: z[start:start + b] for k, z in self.given.items()}
        for level in reversed(range(cfg.num_levels)):
            if level in gen:
                continue
            model, spec = self.models[level]
            conds = noisy_conditions(cfg, level, gen, g)
            thresh = how.pixel_thresholding and thresholded(cfg, level, spec)
            z = sample_level(model, spec, conds, b, how.steps[level], how.guidance[level], g, how.sampler, thresh, y)
            gen[level] = finish_sample(z, gen, spec)
        return gen


def noisy_conditions(cfg: Config, level: int, latents: dict[int, torch.Tensor],
                     generator: torch.Generator) -> list[torch.Tensor]:
    """The conditions of `level`: each coarser latent z_k with its own sigma_k noise (z_hat_k, as in training)."""
    return [latents[k] + cfg.level(k).sigma * torch.randn(latents[k].shape, generator=generator)
            for k in cfg.conditions_of(level)]


def load_models(cfg: Config, plan: dict[str, Stage], use_ema: bool = True, skip=()) -> dict:
    """Each level's (model, spec), on the GPU where there is one (sampling's draws stay on the CPU)."""
    device = sampling_device(cfg.compute.device)
    return {level: load_level_model(plan[f"level_{level}_model"].artifact.require(), use_ema, device)
            for level in range(cfg.num_levels) if level not in skip}


def label_frequencies(plan: dict[str, Stage]) -> torch.Tensor:
    """The training split's label frequencies (class-conditional sampling draws its labels from them)."""
    m = read_manifest(plan["images"].artifact.require())
    labels = [y for y, s in zip(m.column("label").to_pylist(), m.column("split").to_pylist()) if s == "train"]
    return torch.bincount(torch.tensor(labels)).double()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def save_grid(images: np.ndarray, path: Path, cols: int = 8, scale: int | None = None) -> None:
    """(N, H, W, 3) uint8 -> one PNG grid (torchvision's make_grid, white padding), upscaled for viewing by `scale`
    (default: cells of at least 64 px, so a 16 px emoji is a recognisable picture and a 256 px image stays as it is)."""
    scale = scale or max(1, -(-64 // images.shape[1]))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    save_image(make_grid(x, nrow=cols, padding=2, pad_value=1.0), path)


def decode_level0(cfg: Config, z: torch.Tensor) -> torch.Tensor:
    """Level 0 -> pixels in [-1, 1] (its space's decoder: the AutoencoderKL's for a VAE latent)."""
    return level_kind(cfg, 0).decode(cfg, z)


def generate_samples(cfg: Config, plan: dict[str, Stage], out_dir: Path, log: Callable[[str], None] = print, *,
                     engine) -> dict:
    """The samples stage: N images and every level's latents as WebDataset shards, plus two pictures. The batches
    are drawn by the engine's workers (`HierarchySampler`) and written here, in order."""
    sc, how, pixels = cfg.sampling, cfg.sampling_plan(), level_kind(cfg, 0).is_pixels
    began = time.perf_counter()
    stats = {level: ChannelStats() for level in range(cfg.num_levels)}
    first: list[np.ndarray] = []
    count = 0
    sampler = {"cfg": cfg, "plan": plan, "n": sc.num_samples, "seed": sc.seed, "sampling": how}
    progress = Progress(log, "samples", sc.num_samples)
    with wds.ShardWriter(str(out_dir / SHARD_PATTERN), maxcount=10_000, verbose=0) as sink:
        for gen in engine.map(HierarchySampler, sampler, range(0, sc.num_samples, how.batch_size)):
            batch = to_uint8(decode_level0(cfg, gen[0]))
            progress.update(len(batch))
            for level, z in gen.items():
                stats[level].update(z.clamp(-1, 1) if level == 0 and pixels else z)
            for i in range(len(batch)):
                buf = io.BytesIO()
                Image.fromarray(batch[i]).save(buf, format="PNG")
                sample = {"__key__": f"{count:07d}", "png": buf.getvalue()}
                sample.update({f"level_{level}.npy": z[i].numpy() for level, z in gen.items()})
                sink.write(sample)
                count += 1
            first += list(batch[: max(0, 64 - len(first))])
    seconds = time.perf_counter() - began
    images = np.stack(first)
    save_grid(images[:64], out_dir / "grid.png")
    rows = []
    top = cfg.num_levels - 1
    if sc.shared_rows and top > 0:
        # one coarsest latent per row, repeated across the row; the finer levels are sampled from it
        shared = sample_hierarchy(cfg, plan, sc.shared_rows, sc.seed + 1, how)[top]
        given = {top: shared.repeat_interleave(8, dim=0)}
        fine = sample_hierarchy(cfg, plan, 8 * sc.shared_rows, sc.seed + 2, how, given=given)
        save_grid(to_uint8(decode_level0(cfg, fine[0])), out_dir / "shared_coarse.png")
        rows = ["shared_coarse.png"]
    summary = {str(level): st.summary() for level, st in stats.items() if level > 0 or not pixels}
    if pixels:
        summary["pixels"] = stats[0].summary()
    # an engine's workers resolve compute.device themselves (a Ray worker's GPU, where it was given one)
    device = f"{engine.name} workers ({cfg.compute.device})" if engine.distributed else str(
        sampling_device(cfg.compute.device))
    log(f"samples: {count} images in {seconds:.1f} s ({count / seconds:.1f} img/s) on {device}")
    return {"num_samples": count, "sample_seconds": round(seconds, 2),
            "images_per_sec": round(count / seconds, 2), "level_stats": summary, "pictures": ["grid.png", *rows],
            "guidance": cfg.guidance(), "steps": sc.steps, "level_steps": cfg.sampling_steps(), "sampler": sc.sampler,
            "device": device, "precision": "float32"}
