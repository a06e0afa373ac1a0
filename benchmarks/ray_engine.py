"""Wall time of the tiny graph on the local engine and on a local Ray cluster (a head and a second node on this
machine), stage by stage, into benchmarks/results/ray_engine.json:

    .venv/bin/python benchmarks/ray_engine.py

Each engine builds into a fresh home of its own (cold: nothing cached). On one small machine Ray can only cost
time (starting workers, moving batches through its object store): the figure says what that overhead is, so that
a cluster's gain can be weighed against it. Level 2 has train.nproc 2: two Ray Train workers on Ray (NOTE).
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NOTE = ("local: the stage functions in this process (pipeline.stages.materialize), so level 2 trains in one "
        "process there; the Dagster asset would launch torchrun for its train.nproc 2. Ray: every heavy stage "
        "starts its Ray workers (a job of its own), which is most of its time at this size.")
STAGES = ["images", "encoder_features", "svd", "level_1_latents", "level_2_latents", "level_0_model",
          "level_1_model", "level_2_model", "samples", "reference_stats", "evaluation"]


def tiny(engine: str, address: str | None):
    # A deliberate copy of tests/test_ray_engine.py's tiny(): a benchmark does not import the tests.
    from pipeline.config import load_config, parse_config

    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    data["compute"] = {"engine": engine, "ray": {"address": address, "workers": 2}}
    data["levels"][1]["train"] = {**data["levels"][1]["train"], "nproc": 2}
    return parse_config(data)


def timed_run(cfg, home: Path) -> dict:
    from pipeline.plan import build_plan
    from pipeline.stages import materialize

    plan, out = build_plan(cfg, home), {}
    for name in STAGES:
        began = time.perf_counter()
        materialize(cfg, plan, name, log=lambda msg: None)
        out[name] = round(time.perf_counter() - began, 2)
    return out


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    began = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    startup = round(time.perf_counter() - began, 2)
    with tempfile.TemporaryDirectory() as tmp:
        local = timed_run(tiny("local", None), Path(tmp) / "local")
        on_ray = timed_run(tiny("ray", cluster.address), Path(tmp) / "ray")
    ray.shutdown()
    cluster.shutdown()
    result = {"command": "python benchmarks/ray_engine.py", "config": "configs/tiny.yaml (level 2: train.nproc 2)",
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "ray": ray.__version__},
              "cluster": "ray.cluster_utils.Cluster: a head and a second node, one CPU each, on this machine",
              "note": NOTE, "cluster_startup_seconds": startup, "local_seconds": local, "ray_seconds": on_ray,
              "local_total": round(sum(local.values()), 1), "ray_total": round(sum(on_ray.values()), 1)}
    (RESULTS / "ray_engine.json").write_text(json.dumps(result, indent=1) + "\n")
    print("| stage | local s | Ray s |\n|---|---|---|")
    for name in STAGES:
        print(f"| {name} | {local[name]} | {on_ray[name]} |")
    print(f"| total | {result['local_total']} | {result['ray_total']} |")


if __name__ == "__main__":
    main()
