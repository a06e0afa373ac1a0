"""`compute.engine: ray` on a real local Ray cluster (a head and a second node on this machine): the same
fingerprints and features as the local engine, DDP training under Ray Train, a killed worker survived by resume,
and the tiny graph materialized through Dagster with its heavy stages on the cluster."""
import io
import os
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from pipeline.checkpoint import latest_checkpoint  # noqa: E402
from pipeline.config import load_config, parse_config  # noqa: E402
from pipeline.fingerprints import config_fingerprint
from pipeline.features import open_features  # noqa: E402
from pipeline.plan import build_plan  # noqa: E402
from pipeline.stages import materialize  # noqa: E402
from pipeline.train import work_dir  # noqa: E402

pytestmark = pytest.mark.ray
LATENTS = ["images", "encoder_features", "svd", "level_1_latents", "level_2_latents"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def tiny(engine: str, address: str | None = None, **level2_train):
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    data["compute"] = {"engine": engine, "ray": {"address": address, "workers": 2}}
    data["levels"][1]["train"] = {**data["levels"][1]["train"], "nproc": 2, **level2_train}
    data["sampling"]["eval_seeds"] = 2  # two further sample sets for the evaluation: a seed's and an oracle's
    return parse_config(data)


@pytest.fixture(scope="module")
def on_ray(cluster, tmp_path_factory):
    """The tiny graph up to its samples as the UI runs it, on the cluster: features, training (Pipes subprocesses,
    each a driver of the cluster) and sampling."""
    from assets.testing import run_assets

    cfg, home = tiny("ray", cluster.address), tmp_path_factory.mktemp("on_ray")
    names = [*LATENTS, "level_0_model", "level_1_model", "level_2_model", "samples", "reference_stats", "evaluation"]
    result = run_assets(cfg, home, names=names)
    return {"cfg": cfg, "home": home, "plan": build_plan(cfg, home), "result": result}


def test_the_cluster_has_two_nodes(cluster):
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2


def test_features_on_ray_equal_the_local_engines(on_ray, tmp_path):
    cfg, local = on_ray["cfg"], tiny("local")
    plan, lplan = on_ray["plan"], build_plan(local, tmp_path)
    assert config_fingerprint(cfg) == config_fingerprint(local)
    assert {k: s.fingerprint for k, s in plan.items()} == {k: s.fingerprint for k, s in lplan.items()}
    for name in ("images", "encoder_features"):
        materialize(local, lplan, name)
    a, b = (open_features(p["encoder_features"].artifact.require())[:] for p in (plan, lplan))
    assert a.shape == b.shape == (240, 4, 4, 112) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-4)  # the same encoder on the same pixels, in other batches


def _kill_a_worker_after_the_first_checkpoint(work, killed: list):
    """Watches for the first checkpoint, then SIGKILLs one Ray Train worker process (what a lost node does)."""
    deadline = time.time() + 300
    while latest_checkpoint(work) is None and time.time() < deadline:
        time.sleep(0.1)
    for pid in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except (OSError, ValueError):
            continue
        if cmd.startswith(b"ray::RayTrainWorker"):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
            return


def test_ddp_training_on_ray_survives_a_killed_worker_by_resuming(cluster, tmp_path):
    cfg = tiny("ray", cluster.address, steps=120, checkpoint_every=20)
    plan = build_plan(cfg, tmp_path)
    for name in LATENTS:
        materialize(cfg, plan, name)
    stage, killed = plan["level_2_model"], []
    watcher = threading.Thread(target=_kill_a_worker_after_the_first_checkpoint, args=(work_dir(stage), killed))
    watcher.start()
    meta, hit = materialize(cfg, plan, "level_2_model")
    watcher.join()
    assert killed, "no Ray Train worker was found to kill"
    assert not hit and meta["engine"] == "ray" and meta["world_size"] == 2 and meta["steps"] == 120
    assert meta["resumed_from_step"] is not None and meta["resumed_from_step"] % 20 == 0
    assert meta["loss_curve"][-1][1] < meta["loss_curve"][0][1]
    assert stage.artifact.is_complete() and not stage.artifact.damage() and not work_dir(stage).exists()
    again, hit = materialize(cfg, plan, "level_2_model")
    assert hit  # the published model is the cache's, whatever engine asks


def test_the_tiny_graph_materializes_through_dagster_on_the_cluster(on_ray):
    assert on_ray["result"].success
    models = [on_ray["plan"][f"level_{lv}_model"].artifact.metadata() for lv in range(3)]
    assert all(m["engine"] == "ray" for m in models) and [m["world_size"] for m in models] == [1, 1, 2]
    checks = on_ray["result"].get_asset_check_evaluations()
    assert checks and all(e.passed for e in checks)


def test_samples_spread_over_ray_actors_are_the_local_engines(on_ray, tmp_path):
    """The local engine reads the models Ray trained (the same fingerprints, so cache hits) and samples again."""
    from pipeline.sample_shards import raw_samples

    local = tiny("local")
    ray_plan, plan = on_ray["plan"], build_plan(local, on_ray["home"])
    assert all(materialize(local, plan, f"level_{lv}_model")[1] for lv in range(3))
    plan["samples"] = build_plan(local, tmp_path)["samples"]  # the same stage, sampled into another home
    meta, hit = materialize(local, plan, "samples")
    assert not hit
    a, b = (list(raw_samples(p["samples"].artifact.require())) for p in (plan, ray_plan))
    assert meta["num_samples"] == len(a) == len(b) == local.sampling.num_samples
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    # The same batches, seeded by (seed, start), whoever draws them: equal up to float noise (other thread counts
    # sum in another order), so at most one grey level apart
    pixels = [np.stack([np.asarray(Image.open(io.BytesIO(s["png"]))) for s in x]).astype(int) for x in (a, b)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 1 and pixels[0].std() > 10
    np.testing.assert_allclose(np.load(io.BytesIO(a[0]["level_2.npy"])), np.load(io.BytesIO(b[0]["level_2.npy"])),
                               atol=1e-4)



def test_a_level_trained_by_ray_train_is_the_local_engines(on_ray, tmp_path):
    """Level 1 (train.nproc 1) trained on the cluster and again here from the same latents: the same weights up to
    float noise, under the same fingerprint."""
    from safetensors.numpy import load_file

    from pipeline.model_io import WEIGHTS

    local = tiny("local")
    plan = {**on_ray["plan"], "level_1_model": build_plan(local, tmp_path)["level_1_model"]}
    meta, hit = materialize(local, plan, "level_1_model")
    assert not hit and "engine" not in meta
    ray_dir, local_dir = on_ray["plan"]["level_1_model"].artifact.require(), plan["level_1_model"].artifact.require()
    a, b = (load_file(str(d / WEIGHTS[True])) for d in (ray_dir, local_dir))
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)


def test_the_evaluation_on_ray_is_the_local_engines(on_ray, tmp_path):
    """The further sample sets (seed 1, the oracle's two) were sampled and featurized as Ray tasks: the local engine
    evaluates the same samples to the same FIDs."""
    local = tiny("local")
    plan = {**on_ray["plan"], "evaluation": build_plan(local, tmp_path)["evaluation"]}
    meta, hit = materialize(local, plan, "evaluation")
    ray_row, row = on_ray["plan"]["evaluation"].artifact.metadata()["row"], meta["row"]
    assert not hit and len(row["fid_seeds"]) == 2 and row["oracle_fid"] is not None
    np.testing.assert_allclose(ray_row["fid_seeds"], row["fid_seeds"], rtol=1e-3)
    np.testing.assert_allclose(ray_row["oracle_fid"], row["oracle_fid"], rtol=1e-3)
