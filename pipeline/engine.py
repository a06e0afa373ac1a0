"""Where a stage's heavy work runs, behind one interface: the local engine (this process) or Ray (a cluster).

A stage function that spreads work is handed an engine (`engine_for(cfg)`, by `pipeline.stages`) and gives it
the work as plain callables of its own module; an engine knows no stage. Three operations cover the stages:

- `map(worker, kwargs, items)`: `worker(**kwargs)` built once per worker, applied to each item; results in the
  items' order (sampling's batches, the evaluation's further sample sets).
- `map_shards(shards, worker, kwargs, batch_size)`: the worker over a WebDataset's samples in batches of
  {member: array}; results in any order (the encoder over the images).
- `run_group(fn, config, world, name, storage)`: `fn(config)` in `world` processes joined in one torch process
  group, restarted from their checkpoints when one dies (a level's DDP training).

The local engine runs the items one after another here; it never runs a group (torchrun launches the ranks of a
local training, see pipeline/train.py). The Ray engine is pipeline/ray_engine.py's; paper-scale work (streaming
loaders, more devices) plugs in here, as a method of both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import webdataset as wds

from .ray_engine import RayEngine
from .schema import Config


class LocalEngine:
    """Everything in this process."""
    name = "local"
    distributed = False  # whether the work leaves this process (a stage then verifies its inputs here first)

    def map(self, worker: type, kwargs: dict, items: Iterable) -> Iterator[Any]:
        run = worker(**kwargs)
        return (run(item) for item in items)

    def map_shards(self, shards: list[str], worker: type, kwargs: dict, batch_size: int) -> Iterator[dict]:
        run = worker(**kwargs)
        batch: list[dict] = []
        for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
            batch.append(sample)
            if len(batch) == batch_size:
                yield run(_columns(batch))
                batch = []
        if batch:
            yield run(_columns(batch))

    def run_group(self, fn: Callable[[dict], None], config: dict, world: int, name: str, storage: Path) -> None:
        if world != 1:
            raise ValueError(f"{name}: the local engine runs one process; torchrun launches {world} ranks")
        fn(config)


def _columns(samples: list[dict]) -> dict[str, np.ndarray]:
    """Samples as Ray Data hands a batch to map_batches: one array per member (bytes members as object arrays)."""
    keys = [k for k in samples[0] if not k.startswith("__") or k == "__key__"]
    out = {}
    for k in keys:
        column = np.empty(len(samples), dtype=object)
        column[:] = [s[k] for s in samples]
        out[k] = column
    return out


ENGINES = {"local": LocalEngine, "k8s": LocalEngine, "ray": RayEngine}  # k8s: local work inside each asset's pod


def engine_for(cfg: Config):
    """The engine of `compute.engine` (a LocalEngine or a RayEngine)."""
    kind = ENGINES[cfg.compute.engine]
    return kind(cfg.compute.ray) if kind is RayEngine else kind()
