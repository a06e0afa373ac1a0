"""The latent hierarchy on configs/tiny.yaml, materialized through Dagster into a temporary instance."""
import json

import numpy as np
import pytest
import zarr
from assets.definitions import build_definitions
from assets.testing import run_assets
from pipeline import metrics
from pipeline.config import ConfigError, parse_config
from pipeline.evaluate import REFERENCE
from pipeline.ingest import image_shards, read_manifest
from pipeline.levels import latent_shards, load_stats, read_latents
from pipeline.plan import build_plan
from pipeline.sample_shards import sample_shards
from pipeline.svd import load_basis
from pipeline.table import TABLE

DATA = ["images", "encoder_features", "svd", "level_1_latents", "level_2_latents"]
MODELS = ["level_0_model", "level_1_model", "level_2_model"]
ASSETS = DATA + MODELS + ["samples", "reference_stats", "evaluation", "level_neighbours", "variations"]
EVAL = {"samples", "evaluation", "variations"}  # variations sample from every model, as samples do


def cache_flags(result, names=ASSETS):
    return {a: result.asset_materializations_for_node(a)[0].metadata["cache"].value for a in names}


def test_first_materialization_builds_everything(tiny_run):
    assert cache_flags(tiny_run["result"]) == {a: "miss" for a in ASSETS}


def test_artifact_shapes_and_dtypes(tiny_run):
    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    m = read_manifest(plan["images"].path)
    n = cfg.dataset.max_images
    assert m.num_rows == n and len(image_shards(plan["images"].path)) == 3  # 240 images / 100 per shard
    assert set(m.column_names) >= {"id", "label", "source", "content_hash", "split"}

    feats = zarr.open_array(str(plan["encoder_features"].path / "features.zarr"), mode="r")
    assert feats.shape == (n, 4, 4, 112) and feats.dtype == np.float32
    assert feats.attrs["encoder"] == "tf_efficientnet_lite0" and feats.attrs["layer"] == "blocks.4"
    assert len(feats.attrs["checkpoint_sha256"]) == 64 and feats.attrs["input_size"] == 64
    assert np.isfinite(feats[:]).all() and feats[:].std() > 0

    basis = load_basis(plan["svd"].path)
    assert basis["components"].shape == (112, 112) and basis["mean"].shape == (112,)
    n_train = m.column("split").to_pylist().count("train")
    assert int(basis["num_samples"][0]) == n_train * 16  # every position of every training image

    ids = m.column("id").to_pylist()
    splits = m.column("split").to_pylist()
    for level, (s, c) in {1: (4, 16), 2: (2, 8)}.items():
        path = plan[f"level_{level}_latents"].path
        keys, z, y = read_latents(path, "train")
        hkeys, hz, _ = read_latents(path, "holdout")
        assert z.shape == (n_train, c, s, s) and z.dtype == np.float32
        assert keys == [i for i, sp in zip(ids, splits) if sp == "train"]
        assert hkeys == [i for i, sp in zip(ids, splits) if sp == "holdout"]
        assert list(y) == [lab for lab, sp in zip(m.column("label").to_pylist(), splits) if sp == "train"]
        # standardized per channel on the training split
        np.testing.assert_allclose(z.mean((0, 2, 3)), 0, atol=1e-4)
        np.testing.assert_allclose(z.std((0, 2, 3)), 1, atol=1e-3)
        stats = load_stats(path)
        assert stats["mean"].shape == (c,) and (stats["std"] > 0).all()
        assert all(p.endswith(".tar") for p in latent_shards(path))


def test_latent_metadata(tiny_run):
    md = tiny_run["result"].asset_materializations_for_node("level_2_latents")[0].metadata
    assert md["shape"].value == [2, 2, 8] and md["sigma"].value == 1.0
    assert md["kl_capacity_bits_per_image"].value == pytest.approx(32 * 0.5 / np.log(2), rel=1e-3)
    assert 0 < md["variance_kept"].value <= 1
    svd_md = tiny_run["result"].asset_materializations_for_node("svd")[0].metadata
    assert "data:image/png;base64," in svd_md["explained_variance"].value


def test_second_materialization_is_all_cache_hits(tiny_run):
    again = run_assets(tiny_run["cfg"], tiny_run["home"], tiny_run["instance"])
    assert cache_flags(again) == {a: "hit" for a in ASSETS}
    for a in ASSETS:  # same data version as the first run
        first = tiny_run["result"].asset_materializations_for_node(a)[0].tags["dagster/data_version"]
        assert again.asset_materializations_for_node(a)[0].tags["dagster/data_version"] == first


def test_run_report_has_each_steps_time_and_cache_and_the_runs_fid(tiny_run, tmp_path):
    from assets import run_report

    cfg, home, instance = tiny_run["cfg"], tiny_run["home"], tiny_run["instance"]
    first = run_report.report(cfg, home, instance, tiny_run["result"].run_id)
    steps = {s["step"]: s for s in first["run"]["steps"]}
    assert set(ASSETS) <= set(steps) and all(steps[a]["cache"] == "miss" and steps[a]["seconds"] > 0 for a in ASSETS)
    assert first["run"]["wall_seconds"] >= max(s["seconds"] for s in steps.values())
    row = build_plan(cfg, home)["evaluation"].artifact.metadata()["row"]
    q = first["quality"]
    assert q["fid_seeds"] == row["fid_seeds"] and q["fid_over_floor"] == round(row["fid_mean"] / row["fid_floor"], 3)
    assert q["grid"].endswith("grid.png") and (home / "samples").exists()
    again = run_assets(cfg, home, instance)  # the newest run, by default: nothing rebuilt
    newest = run_report.report(cfg, home, instance)
    assert newest["run"]["run_id"] == again.run_id
    assert {s["step"]: s["cache"] for s in newest["run"]["steps"] if s["step"] in ASSETS} == {a: "hit" for a in ASSETS}
    text = run_report.table(first)
    assert "level_0_model" in text and f"FID {q['fid_mean']:.2f}" in text
    run_report.write_json(first, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == first


def edited(cfg, edit):
    data = cfg.model_dump(mode="json")
    edit(data)
    return parse_config(data)


def changed_assets(before, after, home):
    b, a = build_plan(before, home), build_plan(after, home)
    return ({n for n in b if b[n].fingerprint != a[n].fingerprint},
            {n for n in b if b[n].code_version != a[n].code_version})


@pytest.mark.parametrize("field,value", [("channels", 6), ("pool", 1)])
def test_changing_one_level_shape_recomputes_that_level_only(tiny_run, field, value):
    cfg = edited(tiny_run["cfg"], lambda d: d["levels"][1].__setitem__(field, value))
    again = run_assets(cfg, tiny_run["home"], names=DATA)
    assert cache_flags(again, DATA) == {a: "miss" if a == "level_2_latents" else "hit" for a in DATA}
    # The caching table (docs/caching.md): level l's latents, its model and the models conditioned on it (non-Markov: all finer ones)
    rebuilt, stale = changed_assets(tiny_run["cfg"], cfg, tiny_run["home"])
    assert rebuilt == {"level_2_latents", "level_2_model", "level_1_model", "level_0_model", "level_neighbours"} | EVAL
    assert stale == rebuilt  # code versions carry the config lineage: the UI marks all of them stale at once


def test_changing_one_level_training_retrains_that_level_only(tiny_run):
    cfg = edited(tiny_run["cfg"], lambda d: d["levels"][0]["train"].__setitem__("steps", 30))
    rebuilt, stale = changed_assets(tiny_run["cfg"], cfg, tiny_run["home"])
    assert rebuilt == {"level_1_model"} | EVAL and stale == rebuilt
    again = run_assets(cfg, tiny_run["home"], names=ASSETS)
    assert cache_flags(again) == {a: "miss" if a in {"level_1_model"} | EVAL else "hit" for a in ASSETS}
    md = again.asset_materializations_for_node("level_1_model")[0].metadata
    assert md["steps"].value == 30


def test_definitions_refuse_an_invalid_config(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {source: digits}\nlevels:\n  - {pool: 2, channels: 4000, sigma: 1.0}\n")
    monkeypatch.setenv("NESTED_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=r"levels\[0\]\.channels"):
        build_definitions()


def test_every_stage_runs_as_plain_python(tiny_run):
    """What each asset does is a function of pipeline/: called without Dagster, every one finds its artifact."""
    from pipeline.stages import materialize

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    for name, stage in plan.items():
        meta, hit = materialize(cfg, plan, name, log=lambda msg: None)
        assert hit and meta["fingerprint"] == stage.fingerprint, name


def test_changing_sampling_settings_resamples_and_retrains_nothing(tiny_run):
    cfg = edited(tiny_run["cfg"], lambda d: d["sampling"].update(steps=3, guidance=[0.0, 1.0]))
    rebuilt, stale = changed_assets(tiny_run["cfg"], cfg, tiny_run["home"])
    assert rebuilt == EVAL and stale == rebuilt
    again = run_assets(cfg, tiny_run["home"], names=ASSETS)
    assert cache_flags(again) == {a: "miss" if a in EVAL else "hit" for a in ASSETS}


def test_samples_artifact(tiny_run):
    import webdataset as wds

    stage = build_plan(tiny_run["cfg"], tiny_run["home"])["samples"]
    shards = sample_shards(stage.path)
    got = list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in got] == [f"{i:07d}" for i in range(24)]
    assert got[0]["png"].shape == (16, 16, 3)
    assert got[0]["level_1.npy"].shape == (16, 4, 4) and got[0]["level_2.npy"].shape == (8, 2, 2)
    assert (stage.path / "grid.png").is_file() and (stage.path / "shared_coarse.png").is_file()
    md = tiny_run["result"].asset_materializations_for_node("samples")[0].metadata
    assert "data:image/png;base64," in md["grid"].value and "| 1 |" in md["latent_stats"].value


def test_evaluation_matches_clean_fid_and_appends_one_row(tiny_run):
    import pyarrow.parquet as pq
    from cleanfid.fid import fid_from_feats
    from safetensors.numpy import load_file

    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    md = tiny_run["result"].asset_materializations_for_node("evaluation")[0].metadata
    feats = np.load(plan["evaluation"].path / "sample_features.npy")
    ref = load_file(str(plan["reference_stats"].path / REFERENCE))
    assert feats.shape == (24, 2048) and ref["train"].shape[1] == 2048
    assert md["fid"].value == pytest.approx(fid_from_feats(feats, ref["train"]), rel=1e-6)
    assert 0 <= md["precision"].value <= 1 and 0 <= md["recall"].value <= 1
    assert md["kid"].value == pytest.approx(metrics.kid(ref["train"], feats)) and 0 <= md["near_copy_fraction"].value <= 1
    rows = pq.read_table(tiny_run["home"] / TABLE).to_pylist()
    mine = [r for r in rows if r["evaluation_fingerprint"] == plan["evaluation"].fingerprint]
    assert len(mine) == 1 and mine[0]["L"] == 3 and mine[0]["num_samples"] == 24
    assert mine[0]["kid"] == md["kid"].value and mine[0]["near_copy_quantile"] == metrics.NEAR_COPY_QUANTILE
    assert mine[0]["fid"] == pytest.approx(md["fid"].value) and mine[0]["gflops_per_image"] > 0
    again = run_assets(tiny_run["cfg"], tiny_run["home"], names=["evaluation"])  # a cache hit adds no row
    assert again.asset_materializations_for_node("evaluation")[0].metadata["cache"].value == "hit"
    after = pq.read_table(tiny_run["home"] / TABLE).to_pylist()
    assert len([r for r in after if r["evaluation_fingerprint"] == plan["evaluation"].fingerprint]) == 1


def test_level_neighbours_are_the_nearest_latents(tiny_run):
    import json

    from pipeline.data import iter_pixels

    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    found = json.loads((plan["level_neighbours"].path / "neighbours.json").read_text())
    assert len(found) == 6 and (plan["level_neighbours"].path / "neighbours.png").is_file()
    tkeys, tz, _ = read_latents(plan["level_1_latents"].path, "train")
    hkeys, hz, _ = read_latents(plan["level_1_latents"].path, "holdout")
    for q, per_level in found.items():
        assert set(per_level) == {"0", "1", "2"} and all(len(v) == 7 for v in per_level.values())
        d = ((tz - hz[hkeys.index(q)]) ** 2).reshape(len(tz), -1).sum(1)
        assert per_level["1"][0] == tkeys[int(d.argmin())]  # faiss agrees with brute force
    assert set(found) <= {k for k, _, _ in iter_pixels(plan["images"].path, "holdout")}


def test_asset_checks_ran_and_passed(tiny_run):
    evaluations = tiny_run["result"].get_asset_check_evaluations()
    found = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations}
    latents = {(f"level_{lv}_latents", c) for lv in (1, 2) for c in ("standardized", "shards_match_manifest")}
    own = {("images", "shards_match_manifest"), ("encoder_features", "finite"), ("svd", "orthonormal"), *latents,
           *{(m, "checkpoint_loads") for m in MODELS}, ("samples", "complete"), ("reference_stats", "consistent"),
           ("level_neighbours", "complete"), ("evaluation", "row_present"),
           ("variations", "keeps_its_sources")}
    assert found == own | {(a, "files_intact") for a in ASSETS}
    assert all(e.passed for e in evaluations)


def test_a_failing_check_stops_what_reads_the_artifact(tiny_run, tmp_path):
    import json
    import shutil

    from pipeline.cache import MARKER, Artifact, file_record

    from dagster import DagsterInstance

    home = tmp_path / "home"
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    for name in ("images", "encoder_features", "svd"):
        dst = home / plan[name].path.relative_to(tiny_run["home"])
        shutil.copytree(plan[name].path, dst)
    feats = zarr.open_array(str(home / plan["encoder_features"].path.relative_to(tiny_run["home"]) / "features.zarr"),
                            mode="r+")
    feats[0, 0, 0, 0] = np.nan  # a stage that wrote a NaN: the marker vouches for the files as they are now
    features = Artifact(home, "features", plan["encoder_features"].fingerprint)
    marker = features.path / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "files": file_record(features.path)}))
    result = run_assets(tiny_run["cfg"], home, DagsterInstance.ephemeral(), names=DATA, raise_on_error=False)
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [(e.asset_key.to_user_string(), e.check_name) for e in failed] == [("encoder_features", "finite")]
    assert not result.asset_materializations_for_node("svd")  # blocked, not built from NaNs
