"""`compute.engine: ray`: the heavy stages on a Ray cluster, with the local engine's artifacts and fingerprints.

- Features: Ray Data reads the image shards (`read_webdataset`) and runs the frozen encoder in `map_batches`
  actors (`compute.ray.workers` of them, GPU actors where `gpus_per_worker` > 0); the driver writes the rows into
  the same Zarr array as the local stage, whole chunks at a time, in manifest order.
- Sampling: the samples stage's batches (each seeded by its own (seed, start), so any worker draws the same
  images) spread over `workers` actors that load the models once; the driver writes the shards in order.
- Evaluation: the further sample sets of the FID (the other sampling seeds, the oracle's) sampled and run through
  Inception as Ray tasks side by side; the driver computes the FIDs.
- Training: each level under Ray Train's `TorchTrainer` with `train.nproc` workers (the world size is part of the
  model's fingerprint, so torchrun and Ray train the same model), DDP over gloo on CPU and NCCL on GPU. Every worker
  runs pipeline.train.train unchanged; its checkpoints are the local engine's, beside the artifact, so when a worker
  dies Ray restarts the group (`max_failures`) and training resumes from the last checkpoint.

Why Ray's own libraries called from the stage functions, and not dagster-ray: dagster-ray's `ray_executor` and
`RayRunLauncher` move a whole Dagster step or run into one Ray job, which spreads steps over a cluster but not
the work inside a step (the encoder over millions of images, one level's DDP); its `PipesRayJobClient` submits a
script through the Ray Jobs API, which needs the dashboard server and a packaged runtime env. Here the step's own
process is the Ray driver: the Dagster layer is unchanged (pipeline/ imports no Dagster), the asset keeps its lock
and its cache contract, and Ray Data / Ray Train do what they are made for. The cost: the driver must reach the
cluster (`address`) for the step's duration, and the artifacts must live on a filesystem every node mounts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .config import PROJECT_ROOT, Config, EncoderConfig, RayComputeConfig

TRAIN_RESULT = "_ray_train.json"  # rank 0's metadata, handed from the worker to the driver inside the build


def connect(rc: RayComputeConfig) -> None:
    """Join the cluster at `address` (or start a Ray here when it is None), once per process."""
    import ray

    if ray.is_initialized():
        return
    # Workers import pipeline/ and models/ from the project root: on a cluster every node has the same checkout
    # (the image of deploy/k8s/) and the same NESTED_HOME path.
    ray.init(address=rc.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})


class _Encode:
    """A map_batches actor: the frozen encoder, built once per worker, on its GPU if it was given one."""

    def __init__(self, cfg: EncoderConfig):
        import torch

        from .features import Preprocess, build_extractor

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.extractor = build_extractor(cfg).to(self.device)
        self.pre = Preprocess(cfg).to(self.device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

    def __call__(self, batch: dict) -> dict:
        import torch

        from .features import decode_png

        x = torch.from_numpy(np.stack([decode_png(b) for b in batch["src.png"]])).to(self.device)
        with torch.inference_mode(), self.autocast:
            feats = self.extractor(self.pre(x)).float().cpu().numpy()
        return {"__key__": batch["__key__"], "features": feats}


def extract_features_on_ray(cfg: EncoderConfig, rc: RayComputeConfig, images_dir: Path, out_dir: Path,
                            chunk_rows: int = 256, log: Callable[[str], None] = print) -> dict:
    """pipeline.features.extract_features with the encoder forward spread over Ray Data actors."""
    import ray

    from .features import create_feature_array, feature_metadata
    from .ingest import image_shards, read_manifest

    connect(rc)
    ids = read_manifest(images_dir).column("id").to_pylist()
    row_of = {key: i for i, key in enumerate(ids)}
    arr = create_feature_array(cfg, out_dir, len(ids), chunk_rows)
    step = arr.chunks[0]
    # Reading the tars is I/O (the actors decode the PNGs): no CPU reserved for it, or actors holding every CPU of
    # a small cluster would starve the read and wait for it forever.
    ds = ray.data.read_webdataset([str(p) for p in image_shards(images_dir)], decoder=None, num_cpus=0)
    ds = ds.map_batches(_Encode, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=rc.workers), num_cpus=rc.cpus_per_worker,
                        num_gpus=rc.gpus_per_worker or None)
    # Batches arrive in any order: each chunk fills in a buffer and is written once, whole, when its last row lands.
    pending: dict[int, tuple[np.ndarray, int]] = {}
    done = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key, feat in zip(batch["__key__"], batch["features"]):
            if key not in row_of:
                raise RuntimeError(f"image shards hold '{key}', which the manifest does not list")
            c, r = divmod(row_of.pop(key), step)
            size = min(step, len(ids) - c * step)
            buf, filled = pending.get(c) or (np.empty((size, *feat.shape), np.float32), 0)
            buf[r] = feat
            pending[c] = (buf, filled + 1)
            if filled + 1 == size:
                arr[c * step:c * step + size] = pending.pop(c)[0]
                done += size
    if row_of or pending:
        raise RuntimeError(f"image shards miss {len(row_of)} of the manifest's {len(ids)} images")
    log(f"features on Ray: {done} images through {rc.workers} encoder actors")
    return feature_metadata(cfg, arr, out_dir, log)


def train_on_ray(cfg: Config, plan: dict, level: int, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The models stage of one level under Ray Train; rank 0 writes the model into out_dir (the build's temp dir,
    published by the caller's `materialize`, which holds the fingerprint's lock for the whole run)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .train import write_run_file

    rc, stage = cfg.compute.ray, plan[f"level_{level}_model"]
    # The workers read the level's data in processes of their own: verified here first, so a damaged input fails
    # before the cluster is asked for anything, and recorded as this build's inputs.
    from .plan import training_inputs

    for name in training_inputs(cfg, level):
        plan[name].artifact.require()
    connect(rc)
    world = cfg.train_config(level).nproc
    resources = {"CPU": rc.cpus_per_worker, **({"GPU": rc.gpus_per_worker} if rc.gpus_per_worker else {})}
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"run_file": str(write_run_file(cfg, plan, stage.artifact.home)), "level": level,
                           "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(num_workers=world, use_gpu=rc.gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(name=f"level_{level}_model-{stage.fingerprint}",
                             storage_path=str(stage.artifact.home / ".ray"),
                             failure_config=FailureConfig(max_failures=rc.max_failures)))
    log(f"level {level}: {world} Ray Train workers (resources {resources} each)")
    trainer.fit()  # raises when the group failed more than max_failures times
    result = out_dir / TRAIN_RESULT
    meta = json.loads(result.read_text())
    result.unlink()
    return meta


def _train_worker(config: dict) -> None:
    """One Ray Train worker: pipeline.train.train as under torchrun (Ray set RANK, WORLD_SIZE and the process group)."""
    import ray.train

    from .train import read_run_file, train

    cfg, plan = read_run_file(config["run_file"])
    rank = ray.train.get_context().get_world_rank()
    out_dir = Path(config["out_dir"])
    meta = train(cfg, plan, out_dir if rank == 0 else None, level=config["level"])
    if rank == 0:
        (out_dir / TRAIN_RESULT).write_text(json.dumps({**meta, "engine": "ray"}))


class _Sampler:
    """A sampling actor: the run's models, loaded once, then any batch of the samples stage on request."""

    def __init__(self, run_file: str, args: tuple):
        from .sample import load_models
        from .train import read_run_file

        self.cfg, self.plan = read_run_file(run_file)
        self.args, self.models = args, load_models(self.cfg, self.plan)

    def batch(self, start: int) -> dict:
        from .sample import iter_hierarchy

        return next(iter_hierarchy(self.cfg, self.plan, *self.args, starts=[start], models=self.models))


def sample_batches_on_ray(cfg: Config, plan: dict, n: int, seed: int, steps: list[int], guidance: list[float],
                          kind: str, pixel_thresholding: bool, batch_size: int):
    """pipeline.sample.iter_hierarchy's batches, computed by Ray actors, yielded in order; at most `workers` batches
    are in flight."""
    import ray
    from ray.util import ActorPool

    from .train import write_run_file

    rc = cfg.compute.ray
    connect(rc)
    args = (n, seed, steps, guidance, kind, pixel_thresholding, batch_size)
    run_file = str(write_run_file(cfg, plan, plan["samples"].artifact.home))
    actor = ray.remote(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker)(_Sampler)
    pool = ActorPool([actor.remote(run_file, args) for _ in range(rc.workers)])
    yield from pool.map(lambda a, start: a.batch.remote(start), list(range(0, n, batch_size)))


def _sampled_features(run_file: str, seed: int, given, labels) -> np.ndarray:
    from .evaluate import sampled_features
    from .metrics import InceptionFeatures
    from .train import read_run_file

    cfg, plan = read_run_file(run_file)
    return sampled_features(cfg, plan, seed, InceptionFeatures(path=cfg.sampling.inception_weights), given, labels)


def sampled_features_on_ray(cfg: Config, plan: dict, sets: list[tuple]) -> list[np.ndarray]:
    """pipeline.evaluate.sampled_features of each (seed, given, labels) set, as Ray tasks; in the sets' order."""
    import ray

    from .train import write_run_file

    rc = cfg.compute.ray
    connect(rc)
    run_file = str(write_run_file(cfg, plan, plan["evaluation"].artifact.home))
    task = ray.remote(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker)(_sampled_features)
    shared = {}  # the oracle's conditions go to the object store once, whatever the number of seeds
    refs = []
    for seed, given, labels in sets:
        if given is not None and "given" not in shared:
            shared.update(given=ray.put(given), labels=ray.put(labels))
        refs.append(task.remote(run_file, seed, *((shared["given"], shared["labels"]) if given is not None
                                                  else (None, None))))
    return ray.get(refs)
