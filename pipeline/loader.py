"""A level's training data, in memory or streamed: what `pipeline.train.train` draws its batches from.

Two paths, chosen per level by ``compute.loader`` (`auto`: by the split's estimated size in memory against
``compute.memory_budget_gb``, per training process):

- `memory` (`InMemoryBatches`): the split decoded into tensors before step 1 (`load_level_data`), each step's
  batch drawn by index from the step's generator. Fastest where it fits; a resumed run draws what the killed one
  would have.
- `stream` (`StreamedBatches`): a torch DataLoader over `LevelStream`, an IterableDataset over the level's
  WebDataset shards, zipped by position with each condition's shards: `loader_workers` processes decode, each
  shuffling its samples in a buffer of `shuffle_buffer`; the pinned batches go to the GPU without waiting. Its
  memory does not grow with the split.

How the split is shared out. Image shards hold both splits mixed and latent shards one split each, so the shards
of a target and of its conditions do not line up. The unit of work is therefore a range of the split's positions
(its samples in manifest order, the order every level's shards are written in) that lies inside one shard of
every stream: the cuts are every stream's shard boundaries. Each epoch the units are shuffled by (seed, epoch),
the same on every rank, then dealt out by rank and by DataLoader worker: each sample is read once per epoch, by
one worker of one rank. Epochs repeat without end (training counts steps); a resumed run reseeds the stream from
its first step (`stream_seed`), so it is reproducible but draws other batches than the killed run would have.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import random
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, default_collate

from .data import pixels_of
from .ingest import image_shards, level0_png, read_manifest
from .level_kinds import batch_target, level_kind, level_shape, load_level_data, stream_targets
from .levels import decode_cls, decode_npy, latent_shards
from .schema import Config

GB = 1024 ** 3


# -- the shards of one stream --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardedStream:
    """One stream of a split's samples (a level's target, or one condition) as its shards, in manifest order:
    `counts[i]` of the split's samples are in `urls[i]`. Only the members a sample needs are read, and only
    `latent.npy` (no pickles), PNG, JSON and `cls` are decoded."""
    name: str  # for messages: "level 1 latents", "level 0 images"
    urls: tuple[str, ...]
    counts: tuple[int, ...]
    images: bool  # image shards (both splits mixed, pixels as PNG), else latent shards (one split, latent.npy)
    split: str = "train"

    @property
    def starts(self) -> list[int]:
        return [0, *itertools.accumulate(self.counts)]

    def __len__(self) -> int:
        return sum(self.counts)

    def members(self, name: str) -> bool:
        return name.split(".", 1)[-1] in (("img.png", "json", "cls") if self.images else ("latent.npy", "cls"))

    def read(self, lo: int, hi: int, decoded: bool = True) -> Iterator[tuple[str, np.ndarray | dict, int]]:
        """(key, float32 array, label) of the split's samples at positions lo .. hi-1, which lie in one shard; with
        `decoded` False, the sample's members as stored (`decode` makes the array)."""
        shard = bisect_right(self.starts, lo) - 1
        raw = wds.tarfile_to_samples(select_files=self.members)(iter([{"url": self.urls[shard]}]))
        mine = (s for s in raw if not self.images or json.loads(s["json"])["split"] == self.split)
        skip = lo - self.starts[shard]
        for s in itertools.islice(mine, skip, skip + hi - lo):
            yield s["__key__"], self.decode(s) if decoded else s, decode_cls(s["cls"])

    def decode(self, s: dict) -> np.ndarray:
        if self.images:
            return pixels_of(level0_png(s))
        return decode_npy(s["latent.npy"]).astype(np.float32, copy=False)  # a VAE's latents are stored in float16


def latent_stream(cfg: Config, stage, split: str = "train") -> ShardedStream:
    """A latents artifact's shards of a split. Each holds dataset.shard_size samples (webdataset's ShardWriter
    rolls over at that count), the last the rest: the split's count comes from the artifact's metadata."""
    directory, name = stage.artifact.require(), f"{stage.artifact.name}"
    urls = [str(p) for p in latent_shards(directory, split)]
    n, size = int(stage.artifact.metadata()["counts"][split]), cfg.dataset.shard_size
    if len(urls) != math.ceil(n / size):
        raise ValueError(f"{name}: {len(urls)} {split} shards for {n} samples of {size} per shard; rematerialize "
                         f"the '{name}' asset")
    return ShardedStream(name, tuple(urls), tuple(min(size, n - i * size) for i in range(len(urls))), False, split)


def image_stream(images_stage, split: str = "train") -> ShardedStream:
    """The image shards of a split: the manifest says how many of the split's images each holds."""
    directory = images_stage.artifact.require()
    per_shard = Counter(read_manifest(directory, ["shard"], split=split).column("shard").to_pylist())
    urls = [u for u in image_shards(directory) if per_shard[os.path.basename(u)]]
    return ShardedStream("images", tuple(urls), tuple(per_shard[os.path.basename(u)] for u in urls), True, split)


def level_streams(cfg: Config, plan: dict, level: int, split: str = "train") -> list[ShardedStream]:
    """A level's target stream, then one stream per condition (in cfg.conditions_of order)."""
    if level == 0:
        own = level_kind(cfg, 0).latents_stage  # a VAE level 0 has latent shards of its own; pixels are the images
        target = latent_stream(cfg, plan[own], split) if own else image_stream(plan["images"], split)
    else:
        target = latent_stream(cfg, plan[f"level_{level}_latents"], split)
    return [target, *(latent_stream(cfg, plan[f"level_{k}_latents"], split) for k in cfg.conditions_of(level))]


# -- units of work -------------------------------------------------------------------------------------------------

def work_units(streams: list[ShardedStream], at_least: int = 1) -> list[tuple[int, int]]:
    """Ranges [lo, hi) of the split's positions, each inside one shard of every stream (the cuts: every stream's
    shard boundaries), cut further to make at least `at_least` of them where the split has that many samples."""
    sizes = {s.name: len(s) for s in streams}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"the level's streams hold different numbers of samples ({sizes}): rebuild the latents")
    n = len(streams[0])
    cuts = sorted({c for s in streams for c in s.starts} | {0, n})
    longest = max(1, math.ceil(n / at_least))
    units = []
    for lo, hi in zip(cuts, cuts[1:]):
        pieces = math.ceil((hi - lo) / longest)
        bounds = [lo + (hi - lo) * i // pieces for i in range(pieces + 1)]
        units += list(zip(bounds, bounds[1:]))
    return units


def read_unit(streams: list[ShardedStream], unit: tuple[int, int], level: int, decoded: bool = True
              ) -> Iterator[tuple[str, np.ndarray, tuple[np.ndarray, ...], int]]:
    """(key, target, conditions, label) of a unit's samples: the streams zipped by position, checked on keys (with
    `decoded` False, target and conditions as stored: `decode_row` decodes them)."""
    lo, hi = unit
    count = 0
    for count, row in enumerate(zip(*(s.read(lo, hi, decoded) for s in streams)), 1):
        (key, x, label), conds = row[0], row[1:]
        for s, (ckey, _, _) in zip(streams[1:], conds):
            if ckey != key:
                raise ValueError(f"{s.name} and level {level}'s {streams[0].name} disagree on keys at position "
                                 f"{lo + count - 1} of the split ({ckey!r} vs {key!r}): rebuild the latents")
        yield key, x, tuple(c for _, c, _ in conds), label
    if count != hi - lo:
        raise ValueError(f"level {level}: positions {lo}..{hi - 1} of the split: only {count} samples in every "
                         f"stream ({', '.join(s.name for s in streams)}); the shards are shorter than recorded")


def decode_row(streams: list[ShardedStream], row: tuple) -> tuple[str, np.ndarray, tuple[np.ndarray, ...], int]:
    """A row of read_unit(..., decoded=False), decoded."""
    key, x, conds, label = row
    return key, streams[0].decode(x), tuple(s.decode(c) for s, c in zip(streams[1:], conds)), label


# -- the streaming dataset -----------------------------------------------------------------------------------------

def derived_seed(*coords: int) -> int:
    return int(np.random.SeedSequence([int(c) for c in coords]).generate_state(1)[0])


class LevelStream(IterableDataset):
    """A level's training samples, streamed: epoch after epoch (`epochs`, None: without end), each epoch's units
    shuffled by (seed, epoch), split by rank, then by DataLoader worker (webdataset's `split_by_worker`), and each
    worker's samples shuffled in a buffer (webdataset's `shuffle`). Yields (key, target, conditions, label)."""

    def __init__(self, streams: list[ShardedStream], level: int, seed: int, rank: int = 0, world: int = 1,
                 workers: int = 0, shuffle_buffer: int = 1000, epochs: int | None = None):
        super().__init__()
        self.streams, self.level, self.seed, self.rank, self.world = streams, level, seed, rank, world
        self.shuffle_buffer, self.epochs = shuffle_buffer, epochs
        slots = world * max(1, workers)
        if len(streams[0]) < slots:
            raise ValueError(f"level {level}: {len(streams[0])} training samples cannot feed {world} ranks x "
                             f"{max(1, workers)} loader workers; lower compute.loader_workers or use loader: memory")
        self.units = work_units(streams, 4 * slots)  # a few units per worker keep their shares even

    def epoch_units(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's units of an epoch: the epoch's order is the same on every rank, so the ranks' shares are
        disjoint and cover the split. (By the rank `train` uses, not webdataset's split_by_node, which reads it from
        the environment: under an engine the two could differ.)"""
        order = list(self.units)
        random.Random(derived_seed(self.seed, epoch)).shuffle(order)
        return order[self.rank::self.world]

    def one_epoch(self, epoch: int) -> Iterator:
        units = wds.split_by_worker(self.epoch_units(epoch))
        # The buffer holds samples as stored (a 256 px PNG: ~0.1 MB), decoded as they leave it (0.8 MB of float32).
        samples = (row for unit in units for row in read_unit(self.streams, unit, self.level, decoded=False))
        if self.shuffle_buffer > 1:
            _, _, worker, _ = wds.utils.pytorch_worker_info()
            rng = random.Random(derived_seed(self.seed, epoch, self.rank, worker))
            samples = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(samples)
        return (decode_row(self.streams, row) for row in samples)

    def __iter__(self):
        for epoch in itertools.count() if self.epochs is None else range(self.epochs):
            yield from self.one_epoch(epoch)


@dataclass
class Collate:
    """Batches of (keys, target, conditions, labels); level 0's target transforms applied in the worker."""
    cfg: Config | None = None
    targets: dict = field(default_factory=dict)  # the transforms' spec entries (level_kinds.stream_targets)

    def __call__(self, samples):
        keys, x, conds, labels = default_collate(samples)
        if self.targets:
            x = batch_target(self.cfg, x, conds, self.targets)
        return keys, x, conds, labels


def data_loader(dataset: LevelStream, batch_size: int, workers: int, device: torch.device,
                collate: Collate | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate or Collate(),
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)


# -- the choice ----------------------------------------------------------------------------------------------------

def split_count(stage, split: str = "train") -> int:
    """How many samples of a split an artifact holds, from its metadata (latents: counts; images: num_train)."""
    meta = stage.artifact.metadata()
    return int(meta["counts"][split] if "counts" in meta else meta[f"num_{split}"])


def estimated_bytes(cfg: Config, plan: dict, level: int, split: str = "train") -> int:
    """What holding a split in memory costs at its peak: float32 targets and conditions, twice over (the decoded
    samples and the stacked tensor coexist while it loads)."""
    target = (level_kind(cfg, 0).latents_stage or "images") if level == 0 else f"level_{level}_latents"
    shapes = [level_shape(cfg, level), *(level_shape(cfg, k) for k in cfg.conditions_of(level))]
    per_sample = 4 * sum(math.prod(s) for s in shapes) + 8  # and the int64 label
    return 2 * split_count(plan[target], split) * per_sample


def choose_loader(setting: str, estimate: int, budget_gb: float) -> str:
    """`memory` or `stream`: as set, or (auto) streaming once the estimate exceeds the budget."""
    if setting != "auto":
        return setting
    return "stream" if estimate > budget_gb * GB else "memory"


# -- what train() draws from ---------------------------------------------------------------------------------------

class InMemoryBatches:
    """The split as tensors on the device; each step's batch drawn by index from the step's generator, first of
    its draws (so the noise, timesteps and dropout after it are what they always were)."""
    kind = "memory"

    def __init__(self, cfg: Config, plan: dict, level: int, per_rank: int, device: torch.device):
        data = load_level_data(cfg, plan, level)
        self.per_rank, self.device, self.num_samples = per_rank, device, len(data)
        self.shape, self.cond_shapes = data.shape, [tuple(c.shape[1:]) for c in data.conds]
        self.target, self.num_classes = data.target, int(data.labels.max()) + 1
        self.x, self.conds, self.labels = data.x.to(device), [c.to(device) for c in data.conds], data.labels.to(device)
        self.workers = 0

    def begin(self, seed: int) -> None:
        """Nothing to start: each step's batch comes from the step's generator."""

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        idx = torch.randint(0, self.num_samples, (self.per_rank,), generator=g, device=g.device).to(self.device)
        return self.x[idx], [c[idx] for c in self.conds], self.labels[idx]


class StreamedBatches:
    """The split streamed through a DataLoader (`LevelStream`), `per_rank` samples a batch, pinned where the device
    is a GPU and copied without waiting for it."""
    kind = "stream"

    def __init__(self, cfg: Config, plan: dict, level: int, per_rank: int, device: torch.device, rank: int = 0,
                 world: int = 1):
        self.cfg, self.level, self.per_rank, self.device = cfg, level, per_rank, device
        self.rank, self.world, self.workers, self.batches = rank, world, cfg.compute.loader_workers, None
        self.streams = level_streams(cfg, plan, level)
        self.num_samples = len(self.streams[0])
        _, x, conds, _ = next(read_unit(self.streams, (0, 1), level))  # the shapes, from the data itself
        self.shape, self.cond_shapes = tuple(x.shape), [tuple(c.shape) for c in conds]
        # the statistics of the training split a target transform needs (MSF's residual scale), in one pass
        self.target = stream_targets(cfg, plan, self.shape, self.total) if level == 0 else {}
        # the dataset's classes (the in-memory path counts up to the largest training label: the same unless the
        # last class has no training image); from the images' metadata, which every level's data descends from
        self.num_classes = len(plan["images"].artifact.metadata()["label_names"])

    def begin(self, seed: int) -> None:
        """Start the workers, streaming from `seed` (`stream_seed`: a resumed run's is its own)."""
        dataset = LevelStream(self.streams, self.level, seed, self.rank, self.world, self.workers,
                              self.cfg.compute.shuffle_buffer)
        self.batches = iter(data_loader(dataset, self.per_rank, self.workers, self.device,
                                        Collate(self.cfg, self.target)))

    def total(self, fn: Callable) -> torch.Tensor:
        """fn(x, conds) summed over one epoch of the split, this rank's share and then every rank's (float64)."""
        dataset = LevelStream(self.streams, self.level, 0, self.rank, self.world, self.workers, shuffle_buffer=1,
                              epochs=1)
        acc = None
        for _, x, conds, _ in data_loader(dataset, 256, self.workers, self.device):
            part = fn(x, conds).double().to(self.device)  # on the device: NCCL reduces GPU tensors
            acc = part if acc is None else acc + part
        if self.world > 1 and dist.is_initialized():
            dist.all_reduce(acc)
        return acc.cpu()

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        _, x, conds, labels = next(self.batches)
        # from pinned memory on a GPU: the copies do not wait for it
        x, labels = x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        return x, [c.to(self.device, non_blocking=True) for c in conds], labels


def stream_seed(seed: int, level: int, start: int) -> int:
    """The stream's seed: a run's (seed, level) and the step it starts from, so a resumed run is reproducible."""
    return derived_seed(seed, level, start)


def training_batches(cfg: Config, plan: dict, level: int, per_rank: int, device: torch.device, rank: int = 0,
                     world: int = 1, log: Callable[[str], None] = print
                     ) -> tuple[InMemoryBatches | StreamedBatches, dict]:
    """Level `level`'s batches for `train`, in memory or streamed as compute.loader and the budget decide, and what
    the model's metadata records of the choice. Call `begin(stream_seed(...))` before the first batch."""
    cc = cfg.compute
    estimate = estimated_bytes(cfg, plan, level)
    kind = choose_loader(cc.loader, estimate, cc.memory_budget_gb)
    log(f"level {level}: loader {kind} (the split is about {estimate / GB:.3g} GB in memory, budget "
        f"{cc.memory_budget_gb:g} GB{'' if cc.loader == 'auto' else f'; compute.loader: {cc.loader}'})")
    if kind == "memory":
        batches = InMemoryBatches(cfg, plan, level, per_rank, device)
    else:
        batches = StreamedBatches(cfg, plan, level, per_rank, device, rank, world)
    return batches, {"loader": kind, "loader_workers": batches.workers,
                     "loader_estimate_gb": round(estimate / GB, 4), "memory_budget_gb": cc.memory_budget_gb}
