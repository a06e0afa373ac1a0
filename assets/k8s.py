"""The Kubernetes engine (`compute.engine: k8s`): the pod each asset runs in and the pod each level trains in.

Under the team deployment (deploy/k8s/, docs/deploy.md#kubernetes-the-team-deployment) the K8sRunLauncher starts
a pod per run and `k8s_job_executor` one per asset, sized by the resources its kind's View declares
(assets/views.py; the sizes are defined here: LIGHT, CPU, GPU). A `level_<l>_model` asset's pod
only launches and watches: the training runs in a pod of its own through Dagster Pipes (`k8s_train_launch`), the
one that holds the GPUs, as the same `assets.train_entry` command the local engine runs as a subprocess.

Every pod mounts the shared artifacts volume at $NESTED_HOME: the plan and the run file name absolute paths.
dagster_k8s is imported inside the functions that need it, so the project imports without it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from dagster import AssetExecutionContext, ExecutorDefinition

from pipeline.schema import Config
from pipeline.stage import Stage

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
# The shared artifacts claim (deploy/k8s/pvc.yaml); the chart's values set NESTED_PVC for every pod.
DEFAULT_CLAIM = "nested-artifacts"
ARTIFACTS_VOLUME = "nested-artifacts"

# The sizes of a step pod a View picks from. Requests place the pod; memory limits stop a runaway build from
# taking the node down. No CPU limits: a throttled torch build is only slower.
LIGHT = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
CPU = {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}
GPU = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
# A training pod's CPU and memory per rank (train.nproc ranks, compute.k8s.gpus GPUs each), beside its GPU limit.
TRAIN_RANK = {"cpu": 4, "memory_gi": 16}
# GPU nodes are commonly tainted so that only pods asking for GPUs land there. Every pod that asks for a GPU
# tolerates the taint: the step pods whose View is GPU-sized (the encoder features) and the training pods.
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def asks_for_gpus(resources: dict) -> bool:
    return "nvidia.com/gpu" in resources.get("limits", {})


def step_k8s_config(cfg: Config, resources: dict) -> dict:
    """The `dagster-k8s/config` of a step pod with `resources` (its View's): its container's requests and limits,
    and the GPU taint's toleration where it asks for a GPU."""
    resources = json.loads(json.dumps(resources))  # a copy
    if cfg.compute.k8s.gpus == 0:  # a cluster without GPUs: the features stage runs on CPU like the rest
        resources["limits"].pop("nvidia.com/gpu", None)
    config = {"container_config": {"resources": resources}}
    if asks_for_gpus(resources):
        config["pod_spec_config"] = {"tolerations": GPU_TOLERATIONS}
    return config


def launched_from(context: AssetExecutionContext) -> tuple[str | None, list[dict]]:
    """The image and the image pull secrets of the code location this run was launched from, as the run's code
    origin records them: under the chart, `dagster-user-deployments`' image (its DAGSTER_CURRENT_IMAGE) and
    `imagePullSecrets` (deploy/k8s/values.yaml), the one place either is named. (None, []) outside a code server."""
    origin = getattr(context.dagster_run, "job_code_origin", None)
    repository = getattr(origin, "repository_origin", None)
    k8s = (getattr(repository, "container_context", None) or {}).get("k8s") or {}
    return getattr(repository, "container_image", None), list(k8s.get("image_pull_secrets") or [])


def k8s_tags(cfg: Config, resources: dict) -> dict[str, str]:
    """The op tags that size a step pod under `k8s_job_executor` (tag values are JSON strings)."""
    return {K8S_CONFIG_TAG: json.dumps(step_k8s_config(cfg, resources))}


def train_ranks(cfg: Config, level: int) -> int:
    """Training processes in a level's pod: the level's train.nproc, the world size its fingerprint holds (as
    under torchrun on one machine and Ray Train), each with compute.k8s.gpus GPUs."""
    return cfg.train_config(level).nproc


def k8s_train_pod(cfg: Config, plan: dict[str, Stage], level: int, command: list[str], run_image: str | None = None,
                  pull_secrets: Sequence[dict] = ()) -> dict:
    """The arguments of `PipesK8sClient.run` (besides the context) that train `level` in a pod of its own with
    `command` (assets/training.py's `train_command` for `train_ranks` ranks and the image's python). The image is
    compute.k8s.image if set, else `run_image`, the image this run's code runs from (`launched_from`), so that a
    rebuilt image needs one tag bumped, in the chart's values; `pull_secrets` are the chart's too."""
    k8s, home = cfg.compute.k8s, str(plan[f"level_{level}_model"].artifact.home)
    image = k8s.image or run_image
    if not image:
        raise ValueError("compute.k8s.image: no image for the training pod; name one, or launch the run from the "
                         "chart's code location, whose image the pod then runs (deploy/k8s/values.yaml)")
    ranks = train_ranks(cfg, level)
    gpus = k8s.gpus * ranks
    limits = {"memory": f"{TRAIN_RANK['memory_gi'] * ranks}Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    mounts = [{"name": ARTIFACTS_VOLUME, "mountPath": home}]
    volumes = [{"name": ARTIFACTS_VOLUME,
                "persistentVolumeClaim": {"claimName": os.environ.get("NESTED_PVC") or DEFAULT_CLAIM}}]
    if ranks > 1:  # NCCL and DDP pass tensors through /dev/shm, which a container gets only 64 MiB of
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container = {"resources": {"requests": {"cpu": str(TRAIN_RANK["cpu"] * ranks), "memory": limits["memory"]},
                               "limits": limits},
                 "volumeMounts": mounts}
    spec = {"containers": [container], "volumes": volumes, "restartPolicy": "Never"}
    if gpus:
        spec["tolerations"] = GPU_TOLERATIONS
    if pull_secrets:
        spec["imagePullSecrets"] = list(pull_secrets)
    if k8s.service_account:
        spec["serviceAccountName"] = k8s.service_account
    return {"image": image, "command": command, "namespace": k8s.namespace, "env": {"NESTED_HOME": home},
            "base_pod_spec": spec,
            # No 24 h cap (Pipes' default): a paper-scale level trains for days.
            "pod_wait_timeout": 0}


def k8s_train_launch(context: AssetExecutionContext, cfg: Config, plan: dict[str, Stage], level: int,
                     command: list[str], client=None) -> Sequence:
    """Train `level` in a training pod through Dagster Pipes; what the pod reported (its materialization), as
    the subprocess path returns it. `client`: a `dagster_k8s.PipesK8sClient` (default: one for this cluster)."""
    if client is None:
        from dagster_k8s import PipesK8sClient

        client = PipesK8sClient()
    image, pull_secrets = launched_from(context)
    pod = k8s_train_pod(cfg, plan, level, command, image, pull_secrets)
    return client.run(context=context, **pod).get_results()


def executor_for(cfg: Config, step_resources: dict[str, dict], default: ExecutorDefinition) -> ExecutorDefinition:
    """`default` for the local and Ray engines; for k8s, `k8s_job_executor` with each asset's step pod sized by
    `step_resources` (op name -> its View's resources: `per_step_k8s_config` by op name, since the assets come
    from factories that take no op tags)."""
    if cfg.compute.engine != "k8s":
        return default
    from dagster_k8s import k8s_job_executor

    per_step = {op: step_k8s_config(cfg, resources) for op, resources in step_resources.items()}
    executor = k8s_job_executor.configured({"job_namespace": cfg.compute.k8s.namespace, "per_step_k8s_config": per_step})
    checked = executor.apply_config_mapping({})  # `configured` checks nothing until a run starts
    if not checked.success:
        raise ValueError("k8s_job_executor config: " + "; ".join(e.message for e in checked.errors))
    return executor
