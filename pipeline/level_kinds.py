"""The kinds of level, each declared once: how its latents (or level 0's data) are made, what its denoiser learns,
how a sample of it is finished, and which settings enter its fingerprint.

- Levels >= 1 (``levels[i].kind``): `semantic` (the encoder's features, pooled and SVD-reduced: nested diffusion),
  and the two pixel kinds, `pixel_base` (MSF) and `cascade` (cascaded diffusion): level 0's data area-averaged
  (pipeline/pixel_levels.py).
- Level 0 is the data in its space (``level0.space``): `pixels`, or the latent of an AutoencoderKL (`vae`).
- Level 0's target may be transformed on top of its data (`TARGETS`, in this order): the residual over its
  upsampled MSF base (when level 1 is a `pixel_base`), and the extended state of a `matryoshka` backbone (every
  nested resolution at once). Training applies them in order; sampling undoes them in reverse, reading how from
  the model's spec, where each leaves an entry under its key.

`level_kind(cfg, level)` is a level's kind, `targets(cfg)` the transforms of level 0's target. Everything that
depends on a kind asks it here; the schema (pipeline/schema.py) only names the kinds and validates them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from models.matryoshka import MATRYOSHKA_SIZES, pack, state_shape, unpack

from .data import collect, iter_latents, iter_pixels
from .features import encoder_features, open_features
from .ingest import read_manifest
from .levels import build_latents, load_stats, project
from .pixel_levels import add_base, build_pixel_latents, downsample, residual_target, standardize
from .runtime import resolve_device
from .schema import Config
from .svd import load_basis
from .vae_latents import build_vae_latents, decode_vae, encode_vae, vae_identity, vae_shape


@dataclass
class LevelData:
    keys: list[str]
    x: torch.Tensor  # (N, ...) the denoiser's target: level 0's data or a standardized latent, maybe transformed
    conds: list[torch.Tensor]  # each (N, c_k, s_k, s_k), clean (the training loop adds sigma_k noise)
    labels: torch.Tensor  # (N,) int64
    shape: tuple[int, ...] = ()  # the level's data shape (before a target transform)
    target: dict = field(default_factory=dict)  # each target transform's entry of the model spec, by its key

    def __len__(self) -> int:
        return len(self.keys)


# -- levels >= 1: latents --------------------------------------------------------------------------------------

class SemanticLevel:
    """The encoder's features pooled to s x s, the leading c SVD channels, standardized (pipeline/levels.py)."""
    name = "semantic"
    from_features = True  # its pool and channels must fit the encoder's feature grid

    def latent_settings(self, cfg: Config, level: int) -> dict:
        lv = cfg.level(level)
        return {"pool": lv.pool, "channels": lv.channels, "shard_size": cfg.dataset.shard_size}

    def latent_inputs(self, cfg: Config, plan: dict, level: int) -> dict:
        return {"features": plan["encoder_features"], "svd": plan["svd"], "images": plan["images"]}

    def build_latents(self, cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None], level: int) -> dict:
        lv = cfg.level(level)
        return build_latents(open_features(plan["encoder_features"].artifact.require()),
                             load_basis(plan["svd"].artifact.require()),
                             read_manifest(plan["images"].artifact.require(), ["id", "label", "split"]),
                             lv.pool, lv.channels, cfg.dataset.shard_size, out_dir)

    def encode(self, cfg: Config, plan: dict, level: int, new: "NewImages") -> torch.Tensor:
        lv, stats = cfg.level(level), load_stats(plan[f"level_{level}_latents"].artifact.require())
        z = project(new.features(cfg, plan), new.basis(plan), lv.pool, lv.channels).double()
        mu, std = (torch.from_numpy(stats[k]).double().view(1, -1, 1, 1) for k in ("mean", "std"))
        return ((z - mu) / std).float()

    def made_from(self, cfg: Config, plan: dict, level: int) -> str:
        lv, enc = cfg.level(level), cfg.encoder
        return (f"{enc.name} `{enc.layer}` at {enc.input_size} px (features `{plan['encoder_features'].fingerprint}`), "
                f"pooled to {lv.pool}x{lv.pool}, top {lv.channels} SVD channels (basis `{plan['svd'].fingerprint}`), "
                f"standardized per channel on the training split")

    def describe(self, cfg: Config, level: int) -> str:
        lv = cfg.level(level)
        return (f"Level {level} latents: features pooled to {lv.pool}x{lv.pool}, top {lv.channels} SVD "
                f"channels, standardized; WebDataset shards keyed by manifest id.")


class PixelLevel:
    """Level 0's data area-averaged to pool x pool and standardized (pipeline/pixel_levels.py). Its two kinds share
    the latents and the model: only what level 0 learns over them differs (`use`)."""

    from_features = False

    def __init__(self, name: str, use: str):
        self.name, self.use = name, use

    def latent_settings(self, cfg: Config, level: int) -> dict:
        lv = cfg.level(level)
        # pixel_base and cascade share these latents: the kind is level 0's business
        return {"pool": lv.pool, "channels": lv.channels, "shard_size": cfg.dataset.shard_size, "made_from": "level0",
                "level0": cfg.level0.model_dump(mode="json", exclude={"train"})}

    def latent_inputs(self, cfg: Config, plan: dict, level: int) -> dict:
        own = level_kind(cfg, 0).latents_stage  # a VAE level 0 is read from its latents
        return {"images": plan["images"], **({"level_0": plan[own]} if own else {})}

    def build_latents(self, cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None], level: int) -> dict:
        space = level_kind(cfg, 0)
        data = {split: space.data(cfg, plan, split) for split in ("train", "holdout")}
        return build_pixel_latents(cfg, level, data, out_dir, log)

    def encode(self, cfg: Config, plan: dict, level: int, new: "NewImages") -> torch.Tensor:
        stats = load_stats(plan[f"level_{level}_latents"].artifact.require())
        x0 = level_kind(cfg, 0).encode(cfg, new.pixels_in_range())
        return standardize(downsample(x0.double(), cfg.level(level).pool), stats["mean"], stats["std"])

    def made_from(self, cfg: Config, plan: dict, level: int) -> str:
        lv = cfg.level(level)
        return (f"level 0 ({cfg.level0.space}, images `{plan['images'].fingerprint}`) area-averaged to "
                f"{lv.pool}x{lv.pool} ({self.name}: {self.use}), standardized per channel on the training split")

    def describe(self, cfg: Config, level: int) -> str:
        lv = cfg.level(level)
        return (f"Level {level} ({self.name}): level 0 area-averaged to {lv.pool}x{lv.pool}, standardized; "
                f"{self.use}. WebDataset shards keyed by manifest id.")


# -- level 0: the data's space ----------------------------------------------------------------------------------

class Level0Space:
    """What every space of level 0 shares: a split's data is its stream, collected."""

    def data(self, cfg: Config, plan: dict, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        return collect(self.stream(cfg, plan, split))


class PixelSpace(Level0Space):
    """Level 0 as RGB pixels in [-1, 1] at dataset.resolution."""
    name = "pixels"
    is_pixels = True  # samples are images as they come: thresholded while sampled, clamped in their statistics
    what = "pixels"
    latents_stage = None  # read from the image shards themselves

    def stream(self, cfg: Config, plan: dict, split: str) -> Iterator[tuple[str, np.ndarray, int]]:
        """(key, (3, H, W) float32, label) of a split, one image at a time in manifest order."""
        return iter_pixels(plan["images"].artifact.require(), split)

    def encode(self, cfg: Config, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def decode(self, cfg: Config, z: torch.Tensor) -> torch.Tensor:
        return z

    def shape(self, cfg: Config) -> tuple[int, int, int]:
        r = cfg.dataset.resolution
        return (3, r, r)


class VaeSpace(Level0Space):
    """Level 0 as an AutoencoderKL latent of the pixels (the paper: SD's VAE), scaled by level0.vae_scale: encoded
    once by its own stage, `level_0_latents` (pipeline/vae_latents.py), and read from its shards."""
    name = "vae"
    is_pixels = False
    what = "VAE latents"
    latents_stage = "level_0_latents"

    def latent_settings(self, cfg: Config, level: int = 0) -> dict:
        return {"scale": cfg.level0.vae_scale, "shard_size": cfg.dataset.shard_size, "stored": "float16"}

    def latent_inputs(self, cfg: Config, plan: dict, level: int = 0) -> dict:
        return {"images": plan["images"], "vae": vae_identity(cfg.level0.vae)}

    def build_latents(self, cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None], level: int = 0) -> dict:
        return build_vae_latents(cfg, plan, out_dir, log)

    def stream(self, cfg: Config, plan: dict, split: str) -> Iterator[tuple[str, np.ndarray, int]]:
        """(key, (c, h, w) float16, label) of a split, one latent at a time in manifest order."""
        return iter_latents(plan[self.latents_stage].artifact.require(), split)

    def encode(self, cfg: Config, pixels: torch.Tensor) -> torch.Tensor:
        return encode_vae(pixels, cfg.level0.vae, cfg.level0.vae_scale, cfg.encoder.batch_size,
                          resolve_device(cfg.compute.device))

    def decode(self, cfg: Config, z: torch.Tensor) -> torch.Tensor:
        return decode_vae(z, cfg.level0.vae, cfg.level0.vae_scale, cfg.encoder.batch_size,
                          resolve_device(cfg.compute.device))

    def shape(self, cfg: Config) -> tuple[int, int, int]:
        return vae_shape(cfg.level0.vae, cfg.dataset.resolution)

    def describe(self, cfg: Config) -> str:
        return (f"Level 0 latents: every image encoded by the AutoencoderKL {cfg.level0.vae} (latent means x "
                f"{cfg.level0.vae_scale}), float16 WebDataset shards keyed by manifest id.")


# -- level 0: transforms of its target ---------------------------------------------------------------------------

class MsfResidual:
    """MSF: level 0 learns x - up(base), scaled to unit std, over the generated level-1 base; sampling adds it back."""
    key = "residual"
    keeps_range = False  # a residual is no image: no pixel thresholding while it is sampled

    def applies(self, cfg: Config) -> bool:
        return bool(cfg.levels) and cfg.levels[0].kind == "pixel_base"

    def model_settings(self, cfg: Config) -> dict:
        return {"target": "residual over level 1"}  # the same data and conditions as a cascade, another target

    def to_target(self, cfg: Config, plan: dict, data: LevelData, split: str) -> tuple[torch.Tensor, dict]:
        base = 1
        stats = load_stats(plan[f"level_{base}_latents"].artifact.require())
        scale = None
        if split != "train":  # the training set's scale, as the model was trained with
            _, xt, _ = level_kind(cfg, 0).data(cfg, plan, "train")
            _, bt, _ = collect(iter_latents(plan[f"level_{base}_latents"].artifact.require(), "train"))
            scale = residual_target(xt.float(), bt, stats)[1]["scale"]
        return residual_target(data.x.float(), data.conds[cfg.conditions_of(0).index(base)], stats, scale)

    def stream_entry(self, cfg: Config, plan: dict, shape, total: Callable) -> dict:
        """to_target's entry for a streamed training split: the residual's std over the whole split, from its
        count, sum and sum of squares (float64) in one pass (`total`)."""
        base = 1
        stats = load_stats(plan[f"level_{base}_latents"].artifact.require())
        at = cfg.conditions_of(0).index(base)

        def moments(x: torch.Tensor, conds: list[torch.Tensor]) -> torch.Tensor:
            r = residual_target(x.float(), conds[at], stats, 1.0)[0].double()
            return torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64), r.sum(), r.square().sum()])

        n, s, ss = total(moments).tolist()
        scale = max(math.sqrt(max(ss - s * s / n, 0.0) / max(n - 1, 1)), 1e-6)  # torch.std's (unbiased), clamped
        return {"level": base, "scale": scale, "mean": [float(v) for v in stats["mean"]],
                "std": [float(v) for v in stats["std"]]}

    def batch_target(self, cfg: Config, x: torch.Tensor, conds: list[torch.Tensor], entry: dict) -> torch.Tensor:
        return residual_target(x.float(), conds[cfg.conditions_of(0).index(entry["level"])], entry, entry["scale"])[0]

    def state_shape(self, shape, entry: dict):
        return shape

    def finish(self, z: torch.Tensor, generated: dict[int, torch.Tensor], entry: dict) -> torch.Tensor:
        return add_base(z, generated[entry["level"]], entry)


class MatryoshkaState:
    """A matryoshka backbone denoises level 0 at every nested resolution jointly (models/matryoshka.py): it learns the
    packed state and sampling keeps its finest resolution."""
    key = "matryoshka"
    keeps_range = True  # every resolution is pixels

    def applies(self, cfg: Config) -> bool:
        return cfg.level0.train.backbone == "matryoshka"

    def model_settings(self, cfg: Config) -> dict:
        return {}  # the backbone is in the training settings already

    def to_target(self, cfg: Config, plan: dict, data: LevelData, split: str) -> tuple[torch.Tensor, dict]:
        nest = MATRYOSHKA_SIZES[cfg.level0.train.size]["nest"]
        return pack(data.x.float(), nest), {"nest": nest, "image_shape": list(data.shape)}

    def stream_entry(self, cfg: Config, plan: dict, shape, total: Callable) -> dict:
        return {"nest": MATRYOSHKA_SIZES[cfg.level0.train.size]["nest"], "image_shape": list(shape)}

    def batch_target(self, cfg: Config, x: torch.Tensor, conds: list[torch.Tensor], entry: dict) -> torch.Tensor:
        return pack(x.float(), entry["nest"])

    def state_shape(self, shape, entry: dict):
        return state_shape(shape, entry["nest"])

    def finish(self, z: torch.Tensor, generated: dict[int, torch.Tensor], entry: dict) -> torch.Tensor:
        return unpack(z, entry["nest"])[0]


LEVEL_KINDS = {"semantic": SemanticLevel(),
               "pixel_base": PixelLevel("pixel_base", "level 0 learns the residual over its upsampled copy, MSF's base"),
               "cascade": PixelLevel("cascade", "level 0 is conditioned on it, a cascade's low-resolution image")}
SPACES = {"pixels": PixelSpace(), "vae": VaeSpace()}
TARGETS = (MsfResidual(), MatryoshkaState())


def level_kind(cfg: Config, level: int):
    """Level `level`'s kind: its space for level 0, its LEVEL_KINDS entry above."""
    return SPACES[cfg.level0.space] if level == 0 else LEVEL_KINDS[cfg.level(level).kind]


def targets(cfg: Config) -> list:
    """The transforms of level 0's target that apply to this config, in training's order."""
    return [t for t in TARGETS if t.applies(cfg)]


def build_level_latents(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print, *,
                        level: int) -> dict:
    """The latents stage of level `level`, as its kind makes them."""
    return level_kind(cfg, level).build_latents(cfg, plan, out_dir, log, level)


def level_shape(cfg: Config, level: int) -> tuple[int, int, int]:
    """(channels, height, width) of a level's data (level 0: its space's)."""
    if level == 0:
        return level_kind(cfg, 0).shape(cfg)
    lv = cfg.level(level)
    return (lv.channels, lv.pool, lv.pool)


def load_level_data(cfg: Config, plan: dict, level: int, split: str = "train") -> LevelData:
    """Level `level`'s training data of a split: its target (level 0's transformed as `targets` say), the clean
    coarser latents that condition it, checked to agree on keys, and labels."""
    if level == 0:
        keys, x, labels = level_kind(cfg, 0).data(cfg, plan, split)
    else:
        keys, x, labels = collect(iter_latents(plan[f"level_{level}_latents"].artifact.require(), split))
    conds = []
    for k in cfg.conditions_of(level):
        ckeys, c, _ = collect(iter_latents(plan[f"level_{k}_latents"].artifact.require(), split))
        if ckeys != keys:
            raise ValueError(f"level {k} latents and level {level} targets disagree on keys (rebuild the latents)")
        conds.append(c)
    data = LevelData(keys, x.float(), conds, labels, tuple(x.shape[1:]))
    for t in targets(cfg) if level == 0 else ():
        x, entry = t.to_target(cfg, plan, data, split)
        data = replace(data, x=x.float(), target={**data.target, t.key: entry})
    return data


def stream_targets(cfg: Config, plan: dict, shape: tuple[int, ...], total: Callable) -> dict:
    """load_level_data's target transforms of level 0 for a streamed training split: each one's spec entry, by key
    (`shape`: the level's data shape). `total(fn)` sums fn(x, conds) over every batch of the split, all ranks'
    shares; each transform sees the batches the ones before it made."""
    entries = {}
    for t in targets(cfg):
        before = dict(entries)
        entries[t.key] = t.stream_entry(cfg, plan, shape, lambda fn, before=before: total(
            lambda x, conds: fn(batch_target(cfg, x, conds, before), conds)))
    return entries


def batch_target(cfg: Config, x: torch.Tensor, conds: list[torch.Tensor], entries: dict) -> torch.Tensor:
    """One batch's target: level 0's data x (with its clean conditions) through the transforms of `entries`."""
    for t in TARGETS:
        if t.key in entries:
            x = t.batch_target(cfg, x, conds, entries[t.key])
    return x.float()


def sampled_shape(spec: dict) -> tuple[int, ...]:
    """The shape a level's sampler draws: its data's, or the state a target transform of its spec denoises."""
    shape = spec["in_shape"]
    for t in TARGETS:
        if t.key in spec:
            shape = t.state_shape(shape, spec[t.key])
    return tuple(shape)


def thresholded(cfg: Config, level: int, spec: dict) -> bool:
    """Whether a level's x0 estimates are pixels, to be kept in [-1, 1] while sampling (dynamic thresholding)."""
    return level == 0 and level_kind(cfg, 0).is_pixels and all(t.keeps_range for t in TARGETS if t.key in spec)


def finish_sample(z: torch.Tensor, generated: dict[int, torch.Tensor], spec: dict) -> torch.Tensor:
    """A sampled target back to the level's data: the target transforms of its spec undone, in reverse."""
    for t in reversed(TARGETS):
        if t.key in spec:
            z = t.finish(z, generated, spec[t.key])
    return z


def model_settings(cfg: Config, level: int) -> dict:
    """What the kinds add to level `level`'s model fingerprint (level 0: its space and its target transforms)."""
    if level != 0:
        return {}
    own = {"level0": cfg.level0.model_dump(mode="json", exclude={"train"})}
    for t in targets(cfg):
        own.update(t.model_settings(cfg))
    return own


@dataclass
class NewImages:
    """Images from outside the dataset, prepared as ingest prepares them: `src` (N, H, W, 3) uint8 at
    dataset.source_size for the encoder, `pixels` the same images at dataset.resolution."""
    src: np.ndarray
    pixels: np.ndarray
    batch_size: int = 64
    _features: np.ndarray | None = None
    _basis: dict | None = None

    @torch.inference_mode()
    def features(self, cfg: Config, plan: dict) -> np.ndarray:
        if self._features is None:
            self._features = encoder_features(cfg.encoder, self.src, resolve_device(cfg.compute.device),
                                              self.batch_size).numpy()
        return self._features

    def basis(self, plan: dict) -> dict:
        if self._basis is None:
            self._basis = load_basis(plan["svd"].artifact.require())
        return self._basis

    def pixels_in_range(self) -> torch.Tensor:
        return torch.from_numpy(self.pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.inference_mode()
def encode_images(cfg: Config, plan: dict, src: np.ndarray, pixels: np.ndarray, batch_size: int = 64
                  ) -> dict[int, torch.Tensor]:
    """Every level's latent of new images, as the latents stage makes them (each level by its kind): `src`
    (N, H, W, 3) uint8 at dataset.source_size, `pixels` the same images at dataset.resolution."""
    new = NewImages(src, pixels, batch_size)
    return {level: level_kind(cfg, level).encode(cfg, plan, level, new) for level in range(1, cfg.num_levels)}
