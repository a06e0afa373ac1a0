"""Each data-quality check passes on the tiny run's artifacts and fails on a damaged copy of them.

The fixture's artifacts are shared with other tests: damage is only ever done to copies under tmp_path.
"""
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import zarr

from pipeline import checks
from pipeline.cache import MARKER
from pipeline.evaluate import REFERENCE
from pipeline.sample_shards import sample_shards
from pipeline.table import TABLE
from pipeline.ingest import MANIFEST, read_manifest
from pipeline.plan import build_plan


@pytest.fixture(scope="module")
def run(tiny_run):
    cfg, home = tiny_run["cfg"], tiny_run["home"]
    plan = build_plan(cfg, home)
    splits = read_manifest(plan["images"].path).column("split").to_pylist()
    return {"cfg": cfg, "home": home, "plan": plan, "train": splits.count("train"), "holdout": splits.count("holdout")}


def copy_of(run, asset: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run["plan"][asset].path, tmp_path / asset))


def rewrite_shard(tar: Path, edit) -> None:
    """Rewrite a WebDataset shard through edit(index, sample) -> sample, or None to drop it (values stay bytes)."""
    samples = [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
               for s in wds.WebDataset([str(tar)], shardshuffle=False, empty_check=False)]
    with wds.TarWriter(str(tar)) as sink:
        for i, s in enumerate(samples):
            if (s := edit(i, s)) is not None:
                sink.write(s)


def edit_npy(data: bytes, change) -> bytes:
    buf = io.BytesIO()
    np.save(buf, change(np.load(io.BytesIO(data))))
    return buf.getvalue()


def with_nan(z: np.ndarray) -> np.ndarray:
    z = z.copy()
    z.flat[0] = np.nan
    return z


def remove_listed(directory: Path, rel: str) -> str:
    """Delete a file of an artifact copy: the checks that read it then fail naming it. Returns what they say."""
    (directory / rel).unlink()
    return f"{rel} listed in its marker but missing"


def unlist(directory: Path, rel: str) -> None:
    """Drop a deleted file from the copy's marker too: an artifact built without it."""
    meta = json.loads((directory / MARKER).read_text())
    del meta["files"][rel]
    (directory / MARKER).write_text(json.dumps(meta))


def drop_manifest_row(images_dir: Path) -> None:
    table = pq.read_table(images_dir / MANIFEST)  # keeps the schema metadata (label names)
    pq.write_table(table.slice(1), images_dir / MANIFEST)


# ---------------------------------------------------------------- images and features

def test_images_match_manifest(run, tmp_path):
    ok = checks.images_match_manifest(run["plan"]["images"].path)
    assert ok.passed, ok.description
    assert ok.metadata["shards_train"] == ok.metadata["manifest_train"] == run["train"]
    assert ok.metadata["shards_holdout"] == ok.metadata["manifest_holdout"] == run["holdout"] > 0

    images = copy_of(run, "images", tmp_path)
    last = sorted((images / "shards").glob("images-*.tar"))[-1]
    lost = sum(1 for _ in wds.WebDataset([str(last)], shardshuffle=False))
    rel = last.relative_to(images).as_posix()
    said = remove_listed(images, rel)
    missing = checks.images_match_manifest(images)
    assert not missing.passed and said in missing.description
    unlist(images, rel)
    bad = checks.images_match_manifest(images)
    assert not bad.passed
    assert bad.metadata["shards_train"] + bad.metadata["shards_holdout"] == run["train"] + run["holdout"] - lost
    assert bad.metadata["manifest_train"] == run["train"]


def test_images_fail_on_a_manifest_row_missing(run, tmp_path):
    images = copy_of(run, "images", tmp_path)
    drop_manifest_row(images)
    bad = checks.images_match_manifest(images)
    assert not bad.passed
    assert bad.metadata["manifest_train"] + bad.metadata["manifest_holdout"] == run["train"] + run["holdout"] - 1


def test_features_are_finite(run, tmp_path):
    plan, n = run["plan"], run["train"] + run["holdout"]
    ok = checks.features_are_finite(plan["encoder_features"].path, plan["images"].path)
    assert ok.passed, ok.description
    assert ok.metadata["non_finite"] == 0 and ok.metadata["shape"][0] == ok.metadata["manifest_rows"] == n

    features = copy_of(run, "encoder_features", tmp_path)
    zarr.open_array(str(features / "features.zarr"), mode="r+")[n - 1, 0, 0, 0] = np.nan  # in the last chunk
    bad = checks.features_are_finite(features, plan["images"].path)
    assert not bad.passed and bad.metadata["non_finite"] == 1

    images = copy_of(run, "images", tmp_path)
    drop_manifest_row(images)
    short = checks.features_are_finite(plan["encoder_features"].path, images)
    assert not short.passed
    assert short.metadata["non_finite"] == 0 and short.metadata["manifest_rows"] == n - 1


# ---------------------------------------------------------------- latents

@pytest.mark.parametrize("level", [1, 2])
def test_latents_pass_on_the_built_levels(run, level):
    latents, images = run["plan"][f"level_{level}_latents"].path, run["plan"]["images"].path
    std = checks.latents_are_standardized(latents)
    assert std.passed, std.description
    m = std.metadata
    assert m["non_finite"] == 0 and m["train_mean_abs_max"] < 1e-3
    assert 1 - 1e-3 < m["train_std_min"] <= m["train_std_max"] < 1 + 1e-3
    assert 0.5 < m["holdout_std_min"] <= m["holdout_std_max"] < 2  # reported, not held to the tolerance
    match = checks.latents_match_manifest(latents, images)
    assert match.passed, match.description
    assert (match.metadata["latents_train"], match.metadata["latents_holdout"]) == (run["train"], run["holdout"])


def test_latents_fail_when_a_shard_is_rescaled(run, tmp_path):
    latents = copy_of(run, "level_1_latents", tmp_path)
    rewrite_shard(latents / "train-000000.tar",
                  lambda i, s: {**s, "latent.npy": edit_npy(s["latent.npy"], lambda z: 3 * z)})
    bad = checks.latents_are_standardized(latents)
    assert not bad.passed
    assert bad.metadata["non_finite"] == 0 and bad.metadata["train_std_max"] > 1.5


def test_latents_fail_on_a_non_finite_holdout_value(run, tmp_path):
    latents = copy_of(run, "level_1_latents", tmp_path)
    rewrite_shard(latents / "holdout-000000.tar",
                  lambda i, s: {**s, "latent.npy": edit_npy(s["latent.npy"], with_nan)} if i == 0 else s)
    bad = checks.latents_are_standardized(latents)
    assert not bad.passed
    assert bad.metadata["non_finite"] == 1 and bad.metadata["train_std_max"] < 1.1  # the train split is fine


def test_latents_fail_to_match_without_a_shard(run, tmp_path):
    latents = copy_of(run, "level_2_latents", tmp_path)
    said = remove_listed(latents, "holdout-000000.tar")
    missing = checks.latents_match_manifest(latents, run["plan"]["images"].path)
    assert not missing.passed and said in missing.description
    unlist(latents, "holdout-000000.tar")
    bad = checks.latents_match_manifest(latents, run["plan"]["images"].path)
    assert not bad.passed
    assert (bad.metadata["latents_holdout"], bad.metadata["manifest_holdout"]) == (0, run["holdout"])
    std = checks.latents_are_standardized(latents)  # an empty split is not its concern
    assert std.passed and std.metadata["holdout_std_min"] is None


def test_latents_fail_to_match_on_a_wrong_key(run, tmp_path):
    latents = copy_of(run, "level_2_latents", tmp_path)
    rewrite_shard(latents / "train-000000.tar", lambda i, s: {**s, "__key__": "not-an-id"} if i == 0 else s)
    bad = checks.latents_match_manifest(latents, run["plan"]["images"].path)
    assert not bad.passed and not bad.metadata["keys_match"]
    assert bad.metadata["latents_train"] == bad.metadata["manifest_train"] == run["train"]  # counts alone agree


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("level", [0, 1, 2])
def test_checkpoint_loads(run, level):
    cfg, stage = run["cfg"], run["plan"][f"level_{level}_model"]
    ok = checks.checkpoint_loads(cfg, run["plan"], level)
    assert ok.passed, ok.description
    assert ok.metadata["step"] == cfg.train_config(level).steps
    assert ok.metadata["params"] == stage.artifact.metadata()["params"] > 0


def test_checkpoint_fails_truncated_or_missing(run, tmp_path):
    cfg = run["cfg"]
    plan = build_plan(cfg, tmp_path)  # same fingerprints, empty home
    missing = checks.checkpoint_loads(cfg, plan, 1)
    assert not missing.passed and "is missing" in missing.description

    shutil.copytree(run["plan"]["level_1_model"].path, plan["level_1_model"].path)
    ema = plan["level_1_model"].path / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    torn = checks.checkpoint_loads(cfg, plan, 1)  # caught by the marker's sizes before safetensors reads it
    assert not torn.passed and "ArtifactDamaged" in torn.metadata["error"] in torn.description
    assert "ema.safetensors is" in torn.description


def test_checkpoint_fails_against_a_config_of_another_shape(run):
    cfg = run["cfg"]
    level1 = cfg.levels[0].model_copy(update={"channels": cfg.levels[0].channels // 2})
    other = cfg.model_copy(update={"levels": [level1, *cfg.levels[1:]]})
    assert not checks.checkpoint_loads(other, run["plan"], 1).passed


# ---------------------------------------------------------------- samples and evaluation

def test_samples_are_complete(run, tmp_path):
    n = run["cfg"].sampling.num_samples
    samples = run["plan"]["samples"].path
    ok = checks.samples_are_complete(samples, n)
    assert ok.passed, ok.description
    assert ok.metadata == {"num_samples": n, "expected": n, "undecodable_images": 0, "bad_latents": 0}
    assert not checks.samples_are_complete(samples, n + 1).passed

    damaged = copy_of(run, "samples", tmp_path)

    def damage(i, s):
        if i == 0:
            return {**s, "png": s["png"][: len(s["png"]) // 2]}
        if i == 1:
            return {**s, "level_1.npy": edit_npy(s["level_1.npy"], with_nan)}
        return s

    for tar in sample_shards(damaged):
        rewrite_shard(tar, damage)
    bad = checks.samples_are_complete(damaged, n)
    assert not bad.passed
    assert bad.metadata == {"num_samples": n, "expected": n, "undecodable_images": 1, "bad_latents": 1}


def test_evaluation_row_present(run):
    evaluation = run["plan"]["evaluation"]
    ok = checks.evaluation_row_present(run["home"], evaluation.fingerprint)
    assert ok.passed, ok.description
    assert ok.metadata["rows"] == 1 and math.isclose(ok.metadata["fid"], evaluation.artifact.metadata()["fid"])


@pytest.mark.parametrize("damage", ["row_removed", "row_twice", "fid_nan", "no_table", "no_artifact"])
def test_evaluation_row_fails_on_a_damaged_table(run, tmp_path, damage):
    evaluation = run["plan"]["evaluation"]
    fingerprint = evaluation.fingerprint
    if damage != "no_artifact":  # a home holding this evaluation's artifact (its row) and a damaged export
        shutil.copytree(evaluation.path, tmp_path / "evaluation" / fingerprint)
    table = pq.read_table(run["home"] / TABLE)
    mine = pc.equal(table["evaluation_fingerprint"], fingerprint)
    if damage == "row_removed":
        table = table.filter(pc.invert(mine))
    elif damage == "row_twice":
        table = pa.concat_tables([table, table.filter(mine)])
    elif damage == "fid_nan":
        table = table.set_column(table.schema.get_field_index("fid"), "fid",
                                 pc.if_else(mine, float("nan"), table["fid"]))
    if damage != "no_table":
        pq.write_table(table, tmp_path / TABLE)
    bad = checks.evaluation_row_present(tmp_path, fingerprint)
    assert not bad.passed
    assert bad.metadata.get("rows") == {"row_removed": 0, "row_twice": 2, "fid_nan": 1, "no_table": None,
                                        "no_artifact": 1}[damage]


# ---------------------------------------------------------------- svd, reference, neighbours, every file

def test_basis_is_orthonormal(run, tmp_path):
    from safetensors.numpy import load_file, save_file

    channels = run["plan"]["encoder_features"].artifact.metadata()["shape"][-1]
    ok = checks.basis_is_orthonormal(run["plan"]["svd"].path, channels)
    assert ok.passed, ok.description
    assert ok.metadata["orthonormality_error"] < 1e-4

    svd = copy_of(run, "svd", tmp_path)
    basis = load_file(str(svd / "basis.safetensors"))
    basis["components"][0] *= 1.1  # one axis no longer unit length
    save_file(basis, str(svd / "basis.safetensors"))
    bad = checks.basis_is_orthonormal(svd, channels)
    assert not bad.passed and bad.metadata["orthonormality_error"] > 0.1
    (svd / "basis.safetensors").write_bytes((svd / "basis.safetensors").read_bytes()[:100])  # truncated
    assert not checks.basis_is_orthonormal(svd, channels).passed


def test_reference_is_consistent(run, tmp_path):
    from safetensors.numpy import load_file, save_file

    meta = run["plan"]["reference_stats"].artifact.metadata()
    args = (meta["num_reference"], meta["num_holdout"])
    ok = checks.reference_is_consistent(run["plan"]["reference_stats"].path, *args)
    assert ok.passed, ok.description

    ref_dir = copy_of(run, "reference_stats", tmp_path)
    ref = load_file(str(ref_dir / REFERENCE))
    ref["mu"] = ref["mu"] + 1.0  # statistics that no longer describe the features
    save_file(ref, str(ref_dir / REFERENCE))
    bad = checks.reference_is_consistent(ref_dir, *args)
    assert not bad.passed and bad.metadata["mu_error"] == pytest.approx(1.0, abs=1e-3)
    ref["mu"] -= 1.0
    ref["train"] = ref["train"][:-1]
    save_file(ref, str(ref_dir / REFERENCE))
    assert not checks.reference_is_consistent(ref_dir, *args).passed  # a reference image missing


def test_neighbours_complete(run, tmp_path):
    import json

    k = run["plan"]["level_neighbours"].artifact.metadata()["k"]
    ok = checks.neighbours_complete(run["plan"]["level_neighbours"].path, run["cfg"].num_levels, k)
    assert ok.passed, ok.description

    nb = copy_of(run, "level_neighbours", tmp_path)
    found = json.loads((nb / "neighbours.json").read_text())
    first = next(iter(found))
    found[first].popitem()  # one level's neighbours lost
    (nb / "neighbours.json").write_text(json.dumps(found))
    bad = checks.neighbours_complete(nb, run["cfg"].num_levels, k)
    assert not bad.passed and bad.metadata["incomplete_queries"] == [first]


@pytest.mark.parametrize("asset", ["encoder_features", "svd", "level_1_model", "reference_stats"])
def test_files_intact_hashes_every_file(run, tmp_path, asset):
    from pipeline.cache import Artifact

    stage = run["plan"][asset]
    ok = checks.files_intact(stage.artifact)
    assert ok.passed, ok.description
    assert ok.metadata["files"] == len([p for p in stage.path.rglob("*") if p.is_file()]) - 1  # all but the marker

    copy = Artifact(tmp_path, stage.kind, stage.fingerprint)
    shutil.copytree(stage.path, copy.path)
    biggest = max((p for p in copy.path.rglob("*") if p.is_file() and p.name != MARKER),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other content
    biggest.write_bytes(bytes(data))
    bad = checks.files_intact(copy)
    assert not bad.passed and "SHA-256" in bad.description
