"""`compute.engine: ray`: the operations of pipeline/engine.py on a Ray cluster, with the local engine's artifacts.

- `map_shards` (the features stage): Ray Data reads the shards (`read_webdataset`) and runs the worker in
  `map_batches` actors (`compute.ray.workers` of them, GPU actors where `gpus_per_worker` > 0).
- `map` (sampling, the evaluation's further sample sets): an ActorPool of `workers` actors, each building the
  worker (loading the models) once; results come back in the items' order, at most `workers` in flight.
- `run_group` (training): Ray Train's `TorchTrainer` with `world` workers (the world size is part of the model's
  fingerprint, so torchrun and Ray train the same model), DDP over gloo on CPU and NCCL on GPU. Its checkpoints
  are the stage's own, beside the artifact, so when a worker dies Ray restarts the group (`max_failures`) and the
  stage resumes from the last checkpoint.

The stage functions hand their work over as callables of their own modules (pickled by reference, imported again
on the workers from the same checkout); this module imports no stage. Ray itself is imported where it is used: it
is an optional dependency (the `ray` extra).

Why Ray's own libraries called from the stage functions, and not dagster-ray: dagster-ray's `ray_executor` and
`RayRunLauncher` move a whole Dagster step or run into one Ray job, which spreads steps over a cluster but not
the work inside a step (the encoder over millions of images, one level's DDP); its `PipesRayJobClient` submits a
script through the Ray Jobs API, which needs the dashboard server and a packaged runtime env. Here the step's own
process is the Ray driver: the Dagster layer is unchanged (pipeline/ imports no Dagster), the asset keeps its lock
and its cache contract, and Ray Data / Ray Train do what they are made for. The cost: the driver must reach the
cluster (`address`) for the step's duration, and the artifacts must live on a filesystem every node mounts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .config import PROJECT_ROOT
from .schema import RayComputeConfig


class RayEngine:
    name = "ray"
    distributed = True

    def __init__(self, rc: RayComputeConfig):
        self.rc = rc

    def connect(self) -> None:
        """Join the cluster at `address` (or start a Ray here when it is None), once per process."""
        import ray

        if ray.is_initialized():
            return
        # Workers import pipeline/ and models/ from the project root: on a cluster every node has the same checkout
        # (the image of deploy/k8s/) and the same NESTED_HOME path.
        ray.init(address=self.rc.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})

    def map(self, worker: type, kwargs: dict, items: Iterable) -> Iterator[Any]:
        import ray
        from ray.util import ActorPool

        self.connect()
        actor = ray.remote(num_cpus=self.rc.cpus_per_worker, num_gpus=self.rc.gpus_per_worker)(_Actor)
        pool = ActorPool([actor.remote(worker, kwargs) for _ in range(self.rc.workers)])
        yield from pool.map(lambda a, item: a.run.remote(item), list(items))

    def map_shards(self, shards: list[str], worker: type, kwargs: dict, batch_size: int) -> Iterator[dict]:
        import ray

        self.connect()
        # Reading the tars is I/O (the actors decode): no CPU reserved for it, or actors holding every CPU of a small
        # cluster would starve the read and wait for it forever.
        ds = ray.data.read_webdataset(shards, decoder=None, num_cpus=0)
        ds = ds.map_batches(worker, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=self.rc.workers), num_cpus=self.rc.cpus_per_worker,
                            num_gpus=self.rc.gpus_per_worker or None)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")

    def run_group(self, fn: Callable[[dict], None], config: dict, world: int, name: str, storage: Path) -> None:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        self.connect()
        rc = self.rc
        resources = {"CPU": rc.cpus_per_worker, **({"GPU": rc.gpus_per_worker} if rc.gpus_per_worker else {})}
        trainer = TorchTrainer(
            fn, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=world, use_gpu=rc.gpus_per_worker > 0,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=rc.max_failures)))
        trainer.fit()  # raises when the group failed more than max_failures times


class _Actor:
    """A Ray actor around any worker: built once, then called per item."""

    def __init__(self, worker: type, kwargs: dict):
        self.worker = worker(**kwargs)

    def run(self, item):
        return self.worker(item)
