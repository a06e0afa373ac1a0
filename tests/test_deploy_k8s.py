"""The Kubernetes deployment, offline: the Helm values against the chart's contract, the PVC, each asset's step
pod config, the executor, and the training pod the level-model asset submits through Pipes (to a fake API)."""
import copy
import functools
import importlib.resources
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes
import pytest
import yaml
from referencing import Registry, Resource
from dagster import AssetKey, DagsterInstance, PipesSubprocessClient, materialize

from assets.factory import Scope
from assets.k8s import (DEFAULT_CLAIM, K8S_CONFIG_TAG, executor_for, k8s_tags, k8s_train_pod, launched_from,
                        step_k8s_config)
from assets.training import MODELS, level_model_asset
from assets.views import VIEWS, view_of
from pipeline.config import PROJECT_ROOT, parse_config
from pipeline.schema import ComputeConfig, K8sComputeConfig
from pipeline.plan import build_plan

K8S = PROJECT_ROOT / "deploy" / "k8s"
IMAGE = "registry.example.com/nested-diffusion:test"


def k8s_cfg(cfg, gpus=1):
    k8s = K8sComputeConfig(image=IMAGE, namespace="nested", gpus=gpus, service_account="trainer")
    return cfg.model_copy(update={"compute": ComputeConfig(engine="k8s", k8s=k8s)})


def from_api_json(obj, kind: str):
    """`obj` as the API server would receive and read it back: camelCase JSON into a kubernetes client model."""
    api = kubernetes.client.ApiClient()
    raw = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
    return api.deserialize(type("Response", (), {"data": json.dumps(raw)})(), kind)


def strict_k8s(obj, api_version: str, kind: str) -> None:
    """`obj` (a client model or its JSON) against the strict schema of its kind in every version of K8S_VERSIONS."""
    import kubernetes_validate

    raw = {"apiVersion": api_version, "kind": kind, **kubernetes.client.ApiClient().sanitize_for_serialization(obj)}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(raw, version, strict=True)


# -- the Helm values: the chart's contract for the keys we set, with the Kubernetes objects in them strict

# Kubernetes versions the objects are checked against (kubernetes-validate ships the strict JSON schemas of each):
# the oldest and the newest the deployment is meant for.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"  # their $id: where the contract's $refs point


def k8s(name: str) -> dict:
    """A reference to a Kubernetes definition (io.k8s.api.core.v1.Volume, ...) in kubernetes-validate's strict
    schemas, where an unknown key is an error (the API server drops it, or refuses it under strict decoding)."""
    return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{name}"}


def closed(properties: dict, required: tuple = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRINGS = {"type": "array", "items": {"type": "string"}}
PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
ANY = {}  # a key of the chart's that this deployment leaves at the chart's default: not ours to restate

# The Dagster chart's values (the 1.13 line), as far as deploy/k8s/values.yaml sets them, written from the chart's
# documentation: every key the chart knows at each level we set (Helm ignores a misspelled one without a word, so
# an unknown key is refused here), the Kubernetes objects inside them strict, and `required` where the chart's
# defaults cannot fill a gap: Helm merges our maps over the chart's, but a list replaces the chart's list whole,
# so each deployment must carry its name, image, arguments and port itself.
CHART_IMAGE = closed({"repository": {"type": "string"}, "tag": {"type": ["string", "integer", "null"]},
                "pullPolicy": PULL_POLICY}, required=("repository", "pullPolicy"))
SECRET_REFS = {"type": "array", "items": k8s("io.k8s.api.core.v1.LocalObjectReference")}
USER_DEPLOYMENT = closed({
    "name": {"type": "string"}, "image": CHART_IMAGE, "dagsterApiGrpcArgs": STRINGS, "codeServerArgs": STRINGS,
    "includeConfigInLaunchedRuns": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
    "deploymentNamespace": {"type": "string"}, "port": {"type": "integer"},
    "env": {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                      {"type": "array", "items": k8s("io.k8s.api.core.v1.EnvVar")}]},
    "envConfigMaps": {"type": "array", "items": k8s("io.k8s.api.core.v1.ConfigMapEnvSource")},
    "envSecrets": {"type": "array", "items": k8s("io.k8s.api.core.v1.SecretEnvSource")},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "affinity": k8s("io.k8s.api.core.v1.Affinity"),
    "tolerations": {"type": "array", "items": k8s("io.k8s.api.core.v1.Toleration")},
    "podSecurityContext": k8s("io.k8s.api.core.v1.PodSecurityContext"),
    "securityContext": k8s("io.k8s.api.core.v1.SecurityContext"),
    "resources": k8s("io.k8s.api.core.v1.ResourceRequirements"),
    "livenessProbe": k8s("io.k8s.api.core.v1.Probe"), "readinessProbe": ANY, "startupProbe": ANY,
    "volumes": {"type": "array", "items": k8s("io.k8s.api.core.v1.Volume")},
    "volumeMounts": {"type": "array", "items": k8s("io.k8s.api.core.v1.VolumeMount")},
    "schedulerName": {"type": "string"},
    "initContainers": {"type": "array", "items": k8s("io.k8s.api.core.v1.Container")},
    "sidecarContainers": {"type": "array", "items": k8s("io.k8s.api.core.v1.Container")},
}, required=("name", "image", "port"))
K8S_RUN_LAUNCHER = closed({
    "image": ANY, "imagePullPolicy": PULL_POLICY, "jobNamespace": {"type": ["string", "null"]},
    "loadInclusterConfig": {"type": "boolean"}, "kubeconfigFile": {"type": ["string", "null"]},
    "envConfigMaps": {"type": "array", "items": k8s("io.k8s.api.core.v1.ConfigMapEnvSource")},
    "envSecrets": {"type": "array", "items": k8s("io.k8s.api.core.v1.SecretEnvSource")},
    "envVars": STRINGS,
    "volumeMounts": {"type": "array", "items": k8s("io.k8s.api.core.v1.VolumeMount")},
    "volumes": {"type": "array", "items": k8s("io.k8s.api.core.v1.Volume")},
    "labels": ANY, "failPodOnRunFailure": ANY, "resources": k8s("io.k8s.api.core.v1.ResourceRequirements"),
    "schedulerName": ANY, "securityContext": ANY, "runK8sConfig": ANY,
})
VALUES_CONTRACT = closed({
    **{key: ANY for key in ("dagsterWebserver", "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret",
                            "rabbitmq", "redis", "flower", "ingress", "computeLogManager", "scheduler", "pythonLogs",
                            "dagsterDaemon", "busybox", "migrate", "serviceAccount", "retention",
                            "additionalInstanceConfig")},
    "global": closed({"dagsterHome": {"type": "string"}, "postgresqlSecretName": {"type": "string"},
                      "serviceAccountName": {"type": "string"}, "celeryConfigSecretName": {"type": "string"}}),
    "imagePullSecrets": SECRET_REFS,
    "dagster-user-deployments": closed({
        "enabled": {"type": "boolean"}, "enableSubchart": {"type": "boolean"}, "imagePullSecrets": SECRET_REFS,
        "deployments": {"type": "array", "items": USER_DEPLOYMENT, "minItems": 1}}),
    "postgresql": closed({
        "image": ANY, "enabled": {"type": "boolean"}, "postgresqlHost": {"type": "string"},
        "postgresqlUsername": {"type": "string"}, "postgresqlPassword": {"type": "string"},
        "postgresqlDatabase": {"type": "string"}, "postgresqlParams": {"type": "object"},
        "postgresqlScheme": {"type": "string"}, "service": ANY}),
    "runLauncher": closed({
        "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
        "config": closed({"celeryK8sRunLauncher": ANY, "k8sRunLauncher": K8S_RUN_LAUNCHER,
                          "customRunLauncher": ANY})}),
    "telemetry": closed({"enabled": {"type": "boolean"}}, required=("enabled",)),
})


@functools.cache
def k8s_definitions(version: str) -> dict:
    """kubernetes-validate's strict definitions of one Kubernetes version (the package ships them)."""
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())


def schema_errors(values: dict, version: str = K8S_VERSIONS[-1]) -> list[str]:
    definitions = k8s_definitions(version)
    assert definitions["$id"] == K8S_DEFINITIONS
    registry = Registry().with_resource(K8S_DEFINITIONS, Resource.from_contents(definitions))
    validator = jsonschema.Draft202012Validator(VALUES_CONTRACT, registry=registry)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((K8S / "values.yaml").read_text())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_helm_values_match_the_chart_contract(values, version):
    assert schema_errors(values, version) == []


def _deployment(v):
    return v["dagster-user-deployments"]["deployments"][0]


@pytest.mark.parametrize("edit, where", [
    (lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(envVar=[]), "runLauncher.config.k8sRunLauncher"),
    (lambda v: _deployment(v).update(dagsterApiGrpcArg=[]), "dagster-user-deployments.deployments.0"),
    (lambda v: _deployment(v).pop("port"), "dagster-user-deployments.deployments.0"),
    (lambda v: _deployment(v)["image"].pop("pullPolicy"), "dagster-user-deployments.deployments.0.image"),
    (lambda v: _deployment(v)["volumes"][0]["persistentVolumeClaim"].update(claimNme="x"),
     "dagster-user-deployments.deployments.0.volumes.0.persistentVolumeClaim"),
    (lambda v: _deployment(v)["volumeMounts"][0].update(mountpath="/nested"),
     "dagster-user-deployments.deployments.0.volumeMounts.0"),
    (lambda v: _deployment(v)["resources"].update(request={"cpu": "1"}),
     "dagster-user-deployments.deployments.0.resources"),
    (lambda v: v["imagePullSecrets"][0].update(nam="x"), "imagePullSecrets.0"),
    (lambda v: v["runLauncher"].update(type="K8sRunLaunchr"), "runLauncher.type"),
    (lambda v: v["telemetry"].update(enabled="no"), "telemetry.enabled"),
    (lambda v: v.update(userDeployments={}), ""),
])
def test_the_values_check_refuses_a_wrong_key_or_value(values, edit, where):
    bad = copy.deepcopy(values)
    edit(bad)
    errors = schema_errors(bad)
    assert errors and any(where == e.split(": ")[0] for e in errors), errors


def test_the_values_check_takes_the_charts_other_keys(values):
    """Keys the chart knows and this deployment leaves at their defaults are still the user's to set."""
    more = copy.deepcopy(values)
    more["dagsterWebserver"] = {"nameOverride": "ui", "replicaCount": 2}
    _deployment(more).update(nodeSelector={"pool": "cpu"}, envSecrets=[{"name": "s3"}],
                             tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    assert schema_errors(more) == []


def helm_set(values: dict, path: str, value: str) -> None:
    """Helm's --set for the paths the guide uses: dotted keys, [i] list indices."""
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node = values
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


def guide_commands() -> str:
    """docs/deploy.md's Kubernetes commands, continuation lines joined."""
    text = (PROJECT_ROOT / "docs" / "deploy.md").read_text()
    section = text[text.index("## Kubernetes"):text.index("## Packages and GPUs")]
    return "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S)).replace("\\\n", " ")


def test_the_guides_commands_name_what_the_files_define(values):
    """The guide followed offline: its helm command's --set values still validate, and the secret, claim, chart
    version, release and webserver service it names are the ones the files and packages expect."""
    import importlib.metadata

    commands = guide_commands()
    (helm,) = [line for line in commands.splitlines() if line.startswith("helm upgrade --install")]
    args = shlex.split(helm.split("#")[0])
    release, chart = args[3], args[4]
    assert chart == "dagster/dagster" and args[args.index("-f") + 1] == "deploy/k8s/values.yaml"
    assert args[args.index("--version") + 1] == importlib.metadata.version("dagster")  # the chart of our Dagster
    assert args[args.index("-n") + 1] == "nested"
    deployed = copy.deepcopy(values)
    for i, a in enumerate(args):
        if a == "--set":
            path, value = args[i + 1].split("=", 1)
            helm_set(deployed, path, value)
    assert deployed["postgresql"]["postgresqlPassword"] and _deployment(deployed)["image"]["tag"]
    assert schema_errors(deployed) == []
    secret = re.search(r"kubectl create secret docker-registry (\S+)", commands).group(1)
    assert {"name": secret} in values["imagePullSecrets"]
    claim = yaml.safe_load((K8S / "pvc.yaml").read_text())["metadata"]["name"]
    assert f"kubectl get pvc -n nested {claim}" in commands and "kubectl apply -n nested -f deploy/k8s/pvc.yaml" in commands
    assert f"svc/{release}-dagster-webserver" in commands  # the chart names its webserver service so
    assert re.search(r"python -m assets\.launch --url http://localhost:3000 images", commands)


def test_helm_values_deploy_this_code_location_on_the_shared_volume(values):
    (dep,) = values["dagster-user-deployments"]["deployments"]
    assert dep["dagsterApiGrpcArgs"] == ["-m", "assets.definitions"]
    assert dep["includeConfigInLaunchedRuns"]["enabled"]  # runs and steps inherit the env and the volume
    (volume,) = [from_api_json(v, "V1Volume") for v in dep["volumes"]]
    (mount,) = [from_api_json(m, "V1VolumeMount") for m in dep["volumeMounts"]]
    pvc = yaml.safe_load((K8S / "pvc.yaml").read_text())
    assert volume.persistent_volume_claim.claim_name == dep["env"]["NESTED_PVC"] == pvc["metadata"]["name"] == DEFAULT_CLAIM
    assert mount.name == volume.name and mount.mount_path == dep["env"]["NESTED_HOME"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["telemetry"] == {"enabled": False}
    assert values["postgresql"]["enabled"] and "postgresqlPassword" not in values["postgresql"]
    assert values["global"]["dagsterHome"]


def test_the_artifacts_claim_is_read_write_many():
    raw = yaml.safe_load((K8S / "pvc.yaml").read_text())
    strict_k8s(raw, raw["apiVersion"], raw["kind"])
    pvc = from_api_json(raw, "V1PersistentVolumeClaim")
    assert pvc.kind == "PersistentVolumeClaim" and pvc.spec.access_modes == ["ReadWriteMany"]
    assert pvc.spec.resources.requests["storage"]


# -- the config


def test_the_image_is_named_once_and_its_pull_secret_reaches_every_pod(values, tiny_cfg, tmp_path):
    (dep,) = values["dagster-user-deployments"]["deployments"]
    assert values["imagePullSecrets"] == values["dagster-user-deployments"]["imagePullSecrets"] == [
        {"name": "nested-registry"}]
    team = yaml.safe_load((PROJECT_ROOT / "configs" / "team_k8s.yaml").read_text())
    assert "image" not in team["compute"]["k8s"]  # the training pods run the code location's image
    cfg = parse_config({**tiny_cfg.model_dump(mode="json", exclude={"variants"}),
                        "compute": {"engine": "k8s", "k8s": {"gpus": 2}}}, check_files=False)
    pod = k8s_train_pod(cfg, build_plan(cfg, tmp_path), 0, ["python"], f"{dep['image']['repository']}:abc123",
                        [{"name": "nested-registry"}])
    assert pod["image"] == "registry.example.com/nested-diffusion:abc123"
    assert pod["base_pod_spec"]["imagePullSecrets"] == [{"name": "nested-registry"}]
    with pytest.raises(ValueError, match=r"compute\.k8s\.image: no image"):  # launched from no code location
        k8s_train_pod(cfg, build_plan(cfg, tmp_path), 0, ["python"])
    named = cfg.model_copy(update={"compute": ComputeConfig(engine="k8s", k8s=K8sComputeConfig(image=IMAGE))})
    assert k8s_train_pod(named, build_plan(named, tmp_path), 0, ["python"], "other:tag")["image"] == IMAGE


def test_the_run_names_the_image_and_pull_secrets_it_was_launched_from():
    repository = type("Repo", (), {"container_image": IMAGE,
                                   "container_context": {"k8s": {"image_pull_secrets": [{"name": "regcred"}]}}})
    run = type("Run", (), {"job_code_origin": type("Origin", (), {"repository_origin": repository})})
    assert launched_from(type("Ctx", (), {"dagster_run": run})) == (IMAGE, [{"name": "regcred"}])
    assert launched_from(type("Ctx", (), {"dagster_run": type("Run", (), {"job_code_origin": None})})) == (None, [])


# -- step pods: k8s_tags and the executor


@pytest.mark.parametrize("gpus", [2, 0])
def test_step_tags_validate_and_size_each_assets_pod(tiny_cfg, tmp_path, gpus):
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    cfg = k8s_cfg(tiny_cfg, gpus)
    job_config = DagsterK8sJobConfig(job_image=IMAGE, dagster_home="/opt/dagster/dagster_home", instance_config_map="i")
    for name, stage in build_plan(cfg, tmp_path).items():
        tags = k8s_tags(cfg, view_of(stage.kind).resources)
        assert set(tags) == {K8S_CONFIG_TAG}
        user_config = get_user_defined_k8s_config(tags)  # the executor's own reading of a step's tags
        job = construct_dagster_k8s_job(job_config, ["dagster"], "step", user_defined_k8s_config=user_config)
        resources = job.spec.template.spec.containers[0].resources
        gpu = resources.limits.get("nvidia.com/gpu")
        # The features stage runs the encoder in its own pod; a model's pod only launches its training pod.
        assert gpu == ("1" if stage.kind == "features" and gpus else None), name
        tolerations = job.spec.template.spec.tolerations or []  # tainted GPU nodes take the pods that ask for one
        assert [t.key for t in tolerations] == (["nvidia.com/gpu"] if gpu else []), name
        assert resources.requests["cpu"] and resources.requests["memory"] and resources.limits["memory"], name
        strict_k8s(job, "batch/v1", "Job")


def test_step_tags_are_checked_by_dagster_k8s():
    from dagster import DagsterInvalidConfigError
    from dagster_k8s.job import get_user_defined_k8s_config

    with pytest.raises(DagsterInvalidConfigError):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps({"container_confg": {}})})
    with pytest.raises(Exception, match="resourcez"):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps({"container_config": {"resourcez": {}}})})
    with pytest.raises(KeyError, match="VIEWS"):
        view_of("a_new_stage")


def test_the_k8s_executor_config_validates(tiny_cfg, tmp_path, monkeypatch):
    from assets.definitions import build_definitions

    cfg = k8s_cfg(tiny_cfg, gpus=2)
    defs = build_definitions(cfg, tmp_path)
    for job in ["all_assets", "train_levels_in_parallel"]:
        executor = defs.resolve_job_def(job).executor_def
        assert executor.name == "k8s"
        checked = executor.apply_config_mapping({})
        assert checked.success, [e.message for e in checked.errors]
        config = checked.value["config"]
        assert config["job_namespace"] == "nested"
        per_step = config["per_step_k8s_config"]
        assert set(per_step) == {a.op.name for a in defs.assets}
        assert per_step["encoder_features"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert per_step["level_0_model"]["container_config"] == step_k8s_config(cfg, VIEWS["models"].resources)["container_config"]
    local = build_definitions(tiny_cfg, tmp_path)
    assert local.resolve_job_def("all_assets").executor_def.name == "in_process"
    assert local.resolve_job_def("train_levels_in_parallel").executor_def.name == "multiprocess"
    monkeypatch.setattr("assets.k8s.step_k8s_config", lambda cfg, resources: {"container_confg": {}})
    with pytest.raises(ValueError, match="container_confg"):
        executor_for(cfg, {a.op.name: {} for a in defs.assets}, None)


# -- the training pod, through PipesK8sClient against a fake Kubernetes API


class FakeCoreApi:
    """What PipesK8sClient calls on the API: the pod is recorded, its log is the Pipes messages given."""

    def __init__(self):
        self.created, self.deleted, self.messages = [], [], []

    def create_namespaced_pod(self, namespace, body):
        self.created.append((namespace, body))

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        return [f"2026-01-01T00:00:{i:02d}.000000Z {json.dumps(m)}\n".encode() for i, m in enumerate(self.messages)]

    def delete_namespaced_pod(self, name, namespace):
        self.deleted.append((namespace, name))


@pytest.fixture
def fake_cluster(monkeypatch):
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterKubernetesClient

    core = FakeCoreApi()
    client = type("FakeClient", (), {"core_api": core, "wait_for_pod": lambda self, *a, **k: None})()
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(lambda *a, **k: client))
    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.delenv("NESTED_PVC", raising=False)
    return core


def pipes(method, **params):
    return {"__dagster_pipes_version": "0.1", "method": method, "params": params}


@pytest.mark.parametrize("gpus, nproc", [(1, 4), (1, 1), (0, 1), (0, 2)])
def test_the_model_asset_trains_in_a_pod_through_pipes(tiny_cfg, tmp_path, fake_cluster, gpus, nproc):
    data = tiny_cfg.model_dump(mode="json")
    data["level0"]["train"]["nproc"] = nproc  # the world size, in the model's fingerprint on every engine
    cfg, torchrun = k8s_cfg(parse_config(data), gpus), nproc > 1
    plan = build_plan(cfg, tmp_path)
    stage = plan["level_0_model"]
    fake_cluster.messages = [
        pipes("opened", extras={}),
        pipes("log", message="step 10: loss 0.5", level="INFO"),
        pipes("report_asset_materialization", asset_key="level_0_model", data_version=stage.fingerprint,
              metadata={"cache": {"raw_value": "miss", "type": "text"}, "steps": {"raw_value": 40, "type": "int"}}),
        pipes("closed"),
    ]
    scope = Scope(cfg, plan, {name: AssetKey([name]) for name in plan}, tmp_path)
    result = materialize([level_model_asset(scope, "level_0_model", MODELS)], instance=DagsterInstance.ephemeral(),
                         resources={"pipes_subprocess_client": PipesSubprocessClient()})
    assert result.success
    # What the pod reported through Pipes is the asset's materialization, as on the subprocess path.
    (mat,) = result.asset_materializations_for_node("level_0_model")
    assert mat.metadata["steps"].value == 40 and mat.metadata["cache"].value == "miss"

    (namespace, body), = fake_cluster.created
    assert namespace == "nested" and fake_cluster.deleted == [(namespace, body.metadata.name)]
    strict_k8s(body, "v1", "Pod")
    pod = from_api_json(body, "V1Pod")
    (c,) = pod.spec.containers
    assert c.image == IMAGE and pod.spec.restart_policy == "Never" and pod.spec.service_account_name == "trainer"
    ranks = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if torchrun else []
    assert c.command[:len(ranks) + 3] == ["python", *ranks, "-m", "assets.train_entry"]
    run_file = Path(c.command[c.command.index("--run-file") + 1])
    assert c.command[-2:] == ["--level", "0"] and run_file.is_file() and run_file.is_relative_to(tmp_path)
    assert c.resources.limits.get("nvidia.com/gpu") == (str(gpus * nproc) if gpus else None)
    assert bool(pod.spec.tolerations) == bool(gpus)
    env = {e.name: e.value for e in c.env}
    assert env["NESTED_HOME"] == str(tmp_path) and "DAGSTER_PIPES_CONTEXT" in env
    mounts = {m.name: m.mount_path for m in c.volume_mounts}
    volumes = {v.name: v for v in pod.spec.volumes}
    (artifacts,) = [n for n, v in volumes.items() if v.persistent_volume_claim]
    assert volumes[artifacts].persistent_volume_claim.claim_name == DEFAULT_CLAIM
    assert mounts[artifacts] == str(tmp_path)  # the run file's absolute paths hold in the pod
    assert ("/dev/shm" in mounts.values()) == torchrun


def test_the_project_imports_and_builds_without_dagster_k8s(tmp_path):
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'dagster_k8s': raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from assets.definitions import defs\n"
        "assert defs.resolve_job_def('all_assets').executor_def.name == 'in_process'\n"
        "assert 'dagster_k8s' not in sys.modules\n"
    )
    env = {**os.environ, "NESTED_CONFIG": "configs/tiny.yaml", "NESTED_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
