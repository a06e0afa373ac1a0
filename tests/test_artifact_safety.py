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
from pipeline.table import TABLE, evaluation_rows, export_table


@pytest.fixture
def home(tiny_run, tmp_path):
    """A private copy of the tiny run's artifacts (locks excluded) and its plan, with the tiny run's evaluation
    alone: other tests of the session evaluate edited configs in the shared run (tests/test_assets.py), and what
    these tests count must not depend on which ran first."""
    copy = Path(shutil.copytree(tiny_run["home"], tmp_path / "home", ignore=shutil.ignore_patterns(".locks")))
    plan = build_plan(tiny_run["cfg"], copy)
    for other in (copy / "evaluation").iterdir():
        if other.is_dir() and other.name != plan["evaluation"].fingerprint:
            shutil.rmtree(other)
    (copy / TABLE).unlink(missing_ok=True)
    export_table(copy)
    return {"cfg": tiny_run["cfg"], "home": copy, "plan": plan}


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
    with pytest.raises(ArtifactDamaged, match=r"is missing\); set aside as .*rematerialize the 'encoder_features' asset"):
        features.artifact.require()
    assert not features.artifact.is_complete()  # set aside by the reader that found it, so it is rebuilt

    shutil.rmtree(plan["svd"].path)
    alone = run_assets(cfg, home["home"], names=["svd"], raise_on_error=False)
    assert not alone.success and "materialize the 'encoder_features' asset first" in failure_text(alone)
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


# ---- no silent wrong results (issue 32): every byte verified before use, every file accounted for, one row each

def flip_low_exponent_bits(path: Path, count: int = 1024) -> None:
    """Flip the lowest exponent bit of `count` values of each float tensor of a safetensors file: the same size,
    numbers off by a factor of 2 (the probe's damage, which passed every size check)."""
    from safetensors.numpy import load_file, save_file

    size = path.stat().st_size
    tensors = load_file(str(path))
    for name, t in tensors.items():
        flat = t.reshape(-1).view({4: "<u4", 8: "<u8"}[t.itemsize])
        flat[:count] ^= {4: 1 << 23, 8: 1 << 52}[t.itemsize]
    save_file(tensors, str(path))
    assert path.stat().st_size == size


def test_flipped_bits_in_a_large_reference_are_caught_before_an_evaluation_reads_them(home, monkeypatch):
    import pipeline.cache

    # The tiny reference stands for the emoji default's 35 MB one: above the size a cache hit hashes.
    monkeypatch.setattr(pipeline.cache, "HASH_ON_USE_BYTES", 1024)
    cfg, plan = home["cfg"], home["plan"]
    reference, evaluation = plan["reference_stats"], plan["evaluation"]
    fid = evaluation.artifact.metadata()["row"]["fid"]
    good = (reference.path / REFERENCE).read_bytes()
    flip_low_exponent_bits(reference.path / REFERENCE)
    assert reference.artifact.damage() == []  # a cache hit that reads nothing compares its size only
    shutil.rmtree(evaluation.path)  # an evaluation not made yet (another sampling seed, say)
    run = run_assets(cfg, home["home"], names=["evaluation"], raise_on_error=False)
    text = failure_text(run)
    assert not run.success and f"{REFERENCE} has changed since it was built" in text and "'reference_stats'" in text
    assert not evaluation.artifact.is_complete()  # nothing computed from the damaged bytes was published
    (aside,) = reference.path.parent.glob(f"{reference.fingerprint}.damaged-*")  # set aside: materializing rebuilds it
    aside.rename(reference.path)  # or repaired by hand, as here (a rebuild is the features test's business)
    (reference.path / REFERENCE).write_bytes(good)
    again = run_assets(cfg, home["home"], names=["reference_stats", "evaluation"])
    assert cache_flag(again, "reference_stats") == "hit" and cache_flag(again, "evaluation") == "miss"
    assert evaluation.artifact.metadata()["row"]["fid"] == fid  # computed from the repaired bytes
    assert evaluation.artifact.metadata()["inputs"][f"reference/{reference.fingerprint}"]


def test_a_copied_sample_shard_is_damage_not_more_samples(home):
    cfg, plan = home["cfg"], home["plan"]
    samples, evaluation = plan["samples"], plan["evaluation"]
    shutil.copy(samples.path / "samples-000000.tar", samples.path / "samples-000001.tar")
    intact = checks.files_intact(samples.artifact)
    assert not intact.passed and "samples-000001.tar is not one of the files its marker lists" in intact.description
    shutil.rmtree(evaluation.path)
    run = run_assets(cfg, home["home"], names=["evaluation"], raise_on_error=False)
    assert not run.success and "samples-000001.tar is not one of the files" in failure_text(run)
    assert not evaluation.artifact.is_complete()
    again = run_assets(cfg, home["home"], names=["samples", "evaluation"])
    assert cache_flag(again, "samples") == "miss"
    assert evaluation.artifact.metadata()["row"]["num_samples"] == cfg.sampling.num_samples


def test_an_extra_latent_shard_never_enters_training(home):
    from pipeline.level_kinds import load_level_data
    from pipeline.levels import latent_shards

    plan = home["plan"]
    latents = plan["level_2_latents"]
    shards = latent_shards(latents.path)
    shutil.copy(shards[0], latents.path / "train-000099.tar")
    assert latent_shards(latents.path) == shards  # the marker's list, not a glob
    with pytest.raises(ArtifactDamaged, match=r"train-000099\.tar is not one of the files its marker lists.*"
                                              r"rematerialize the 'level_2_latents' asset"):
        load_level_data(home["cfg"], plan, 2)


def test_damaged_and_unfinished_copies_of_an_evaluation_add_no_row(home):
    plan, root = home["plan"], home["home"]
    ev = plan["evaluation"]
    shutil.copytree(ev.path, ev.path.with_name(f"{ev.fingerprint}.damaged-20261206T000000"))
    shutil.copytree(ev.path, ev.path.with_name(f"{ev.fingerprint}.tmp-1-abcdef"))  # a marker, not yet renamed
    leftover = root / f".{TABLE}.999999.tmp"  # an export killed before its rename
    leftover.write_bytes(b"PAR1")
    assert [r["evaluation_fingerprint"] for r in evaluation_rows(root)] == [ev.fingerprint]
    export_table(root)
    rows = pq.read_table(root / TABLE).to_pylist()
    assert [r["evaluation_fingerprint"] for r in rows].count(ev.fingerprint) == 1
    assert checks.evaluation_row_present(root, ev.fingerprint).passed
    assert not leftover.exists()
