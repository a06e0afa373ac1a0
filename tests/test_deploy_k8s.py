"""The Kubernetes deployment, offline: the Helm values against the chart's schema, the PVC, each asset's step
pod config, the executor, and the training pod the level-model asset submits through Pipes (to a fake API)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes
import pytest
import yaml
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


# -- the Helm values, against the chart's values.schema.json


def chart_schema() -> dict:
    """The vendored chart schema, made checkable offline and strict: remote (Kubernetes) $refs fall back to the
    type written beside them; `required` goes, since Helm validates our values merged over the chart's defaults;
    and an object with known properties refuses others, since Helm silently ignores a misspelled key."""
    schema = json.loads((K8S / "schema" / "dagster-values.schema.json").read_text())

    def offline(node):
        if isinstance(node, dict):
            if str(node.get("$ref", "")).startswith("http"):
                del node["$ref"]
            if node.get("type") == "object" and node.get("properties") and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                offline(v)
        elif isinstance(node, list):
            for v in node:
                offline(v)

    for node in [schema, *schema["definitions"].values()]:
        node.pop("required", None)
    offline(schema)
    return schema


def schema_errors(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(chart_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)]


@pytest.fixture(scope="module")
def values():
    return yaml.safe_load((K8S / "values.yaml").read_text())


def test_helm_values_match_the_chart_schema(values):
    assert schema_errors(values) == []


@pytest.mark.parametrize("edit, where", [
    (lambda v: v["runLauncher"]["config"]["k8sRunLauncher"].update(envVar=[]), "runLauncher.config.k8sRunLauncher"),
    (lambda v: v["dagster-user-deployments"]["deployments"][0].update(dagsterApiGrpcArg=[]), "dagster-user-deployments.deployments.0"),
    (lambda v: v["runLauncher"].update(type="K8sRunLaunchr"), "runLauncher.type"),
    (lambda v: v["runLauncher"]["config"].pop("k8sRunLauncher"), "runLauncher.config"),
    (lambda v: v["telemetry"].update(enabled="no"), "telemetry.enabled"),
    (lambda v: v.update(userDeployments={}), ""),
])
def test_the_schema_check_refuses_a_wrong_key_or_value(values, edit, where):
    bad = copy.deepcopy(values)
    edit(bad)
    errors = schema_errors(bad)
    assert errors and any(where in e.split(": ")[0] for e in errors), errors


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
    pvc = from_api_json(yaml.safe_load((K8S / "pvc.yaml").read_text()), "V1PersistentVolumeClaim")
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
