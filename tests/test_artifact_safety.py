"""Damaged, interrupted and concurrent materializations on the tiny run: nothing bad is read, nothing is lost.

Every test works on a copy of the tiny run's artifact root, so the shared fixture stays intact.
"""
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from assets.testing import run_assets
from pipeline.config import PROJECT_ROOT as ROOT
from pipeline import checks
from pipeline.cache import ArtifactDamaged
from pipeline.evaluate import REFERENCE
from pipeline.plan import build_plan
from pipeline.table import TABLE, evaluation_rows


@pytest.fixture
def home(tiny_run, tmp_path):
    """A private copy of the tiny run's artifacts (locks excluded) and its plan."""
    copy = Path(shutil.copytree(tiny_run["home"], tmp_path / "home", ignore=shutil.ignore_patterns(".locks")))
    return {"cfg": tiny_run["cfg"], "home": copy, "plan": build_plan(tiny_run["cfg"], copy)}


def failure_text(result) -> str:
    return "\n".join(ev.step_failure_data.error.to_string() for ev in result.get_step_failure_events())


def cache_flag(result, asset: str) -> str:
    return result.asset_materializations_for_node(asset)[0].metadata["cache"].value


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_deleted_feature_chunk_is_caught_before_the_svd_reads_it(home):
    cfg, plan = home["cfg"], home["plan"]
    features = plan["encoder_features"]
    chunk = next(p for p in sorted((features.path / "features.zarr").rglob("*")) if p.is_file() and "/c/" in str(p))
    chunk.unlink()
    # Read directly, the missing chunk is NaN (the array's fill value), so even the `finite` check sees it.
    assert not checks.features_are_finite(features.path, plan["images"].path).passed
    with pytest.raises(ArtifactDamaged, match="is missing.*rematerialize the 'features' asset"):
        features.artifact.require()

    shutil.rmtree(plan["svd"].path)
    alone = run_assets(cfg, home["home"], names=["svd"], raise_on_error=False)
    assert not alone.success and "damaged" in failure_text(alone)
    assert not plan["svd"].artifact.is_complete()

    repaired = run_assets(cfg, home["home"], names=["encoder_features", "svd"])
    assert cache_flag(repaired, "encoder_features") == "miss" and cache_flag(repaired, "svd") == "miss"
    assert features.artifact.damage(full=True) == [] and chunk.exists()
    aside = list(features.path.parent.glob(f"{features.fingerprint}.damaged-*"))
    assert len(aside) == 1  # the damaged copy is kept for inspection, never deleted


def test_a_truncated_basis_is_caught_before_latents_are_built_from_it(home):
    cfg, plan = home["cfg"], home["plan"]
    truncate(plan["svd"].path / "basis.safetensors")
    shutil.rmtree(plan["level_1_latents"].path)
    run = run_assets(cfg, home["home"], names=["level_1_latents"], raise_on_error=False)
    assert not run.success and "basis.safetensors is" in failure_text(run)
    assert not plan["level_1_latents"].artifact.is_complete()
    checked = run_assets(cfg, home["home"], names=["svd", "level_1_latents"])
    assert cache_flag(checked, "svd") == "miss" and cache_flag(checked, "level_1_latents") == "miss"


def test_a_truncated_reference_is_caught_before_the_evaluation_reads_it(home):
    cfg, plan = home["cfg"], home["plan"]
    truncate(plan["reference_stats"].path / REFERENCE)
    shutil.rmtree(plan["evaluation"].path)
    run = run_assets(cfg, home["home"], names=["evaluation"], raise_on_error=False)
    assert not run.success and f"{REFERENCE} is" in failure_text(run)
    assert not plan["evaluation"].artifact.is_complete()
    assert not checks.reference_is_consistent(plan["reference_stats"].path, 1, 1).passed


def test_a_full_disk_between_evaluation_and_table_loses_nothing(home, monkeypatch):
    import pipeline.table

    cfg, plan = home["cfg"], home["plan"]
    fingerprint = plan["evaluation"].fingerprint
    table = home["home"] / TABLE
    before = table.read_bytes()
    shutil.rmtree(plan["evaluation"].path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.table.pq, "write_table", disk_full)
    run = run_assets(cfg, home["home"], names=["evaluation"], raise_on_error=False)
    assert not run.success and "No space left" in failure_text(run)
    assert table.read_bytes() == before  # the old table is untouched
    assert [r["fid"] for r in evaluation_rows(home["home"]) if r["evaluation_fingerprint"] == fingerprint]
    assert not [p for p in home["home"].iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()  # space again: the next run is a cache hit that exports the row, once
    again = run_assets(cfg, home["home"], names=["evaluation"])
    assert cache_flag(again, "evaluation") == "hit"
    rows = [r for r in pq.read_table(table).to_pylist() if r["evaluation_fingerprint"] == fingerprint]
    assert len(rows) == 1
    assert checks.evaluation_row_present(home["home"], fingerprint).passed


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    home, ready, what = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    from pipeline.config import load_config
    cfg = load_config("configs/tiny.yaml")

    def barrier():  # both processes start their materialization at the same moment
        (ready / str(__import__("os").getpid())).touch()
        while len(list(ready.iterdir())) < 2:
            time.sleep(0.02)

    if what == "evaluation":
        import pipeline.evaluate
        from assets.testing import run_assets
        slow = pipeline.evaluate.evaluate_samples

        def evaluate_slowly(*args, **kwargs):  # long enough for the other process to arrive meanwhile
            time.sleep(3)
            return slow(*args, **kwargs)

        pipeline.evaluate.evaluate_samples = evaluate_slowly
        barrier()
        result = run_assets(cfg, home, names=["evaluation"])
        print("CACHE", result.asset_materializations_for_node("evaluation")[0].metadata["cache"].value)
    else:
        from pipeline.plan import build_plan
        from pipeline.train import train_level
        plan = build_plan(cfg, home)
        barrier()
        print("CACHE", train_level(cfg, plan, 2, log=lambda msg: None)["cache"])
""")


def race(home: Path, what: str, tmp_path: Path) -> list[str]:
    script, ready = tmp_path / "race.py", tmp_path / f"ready-{what}"
    script.write_text(RACE)
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(home), str(ready), what], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return sorted(line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("CACHE"))


def test_two_concurrent_evaluations_give_one_build_one_hit_one_row(home, tmp_path):
    plan = home["plan"]
    shutil.rmtree(plan["evaluation"].path)
    (home["home"] / TABLE).unlink()
    assert race(home["home"], "evaluation", tmp_path) == ["hit", "miss"]
    rows = pq.read_table(home["home"] / TABLE).to_pylist()
    assert [r["evaluation_fingerprint"] for r in rows] == [plan["evaluation"].fingerprint]
    assert checks.evaluation_row_present(home["home"], plan["evaluation"].fingerprint).passed


def test_two_concurrent_trainings_of_one_level_train_it_once(home, tmp_path):
    model = home["plan"]["level_2_model"]
    shutil.rmtree(model.path)
    assert race(home["home"], "training", tmp_path) == ["hit", "miss"]
    assert checks.checkpoint_loads(home["cfg"], home["plan"], 2).passed
    assert not list(model.path.parent.glob(f"{model.fingerprint}.*"))  # no work or temporary directory left
