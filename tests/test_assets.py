"""The latent hierarchy on configs/tiny.yaml, materialized through Dagster into a temporary instance."""
import numpy as np
import pytest
import zarr
from dagster import DagsterInstance, materialize

from assets.definitions import build_definitions
from pipeline.config import ConfigError, parse_config
from pipeline.ingest import image_shards, read_manifest
from pipeline.levels import latent_shards, load_stats, read_latents
from pipeline.plan import build_plan
from pipeline.svd import load_basis

ASSETS = ["images", "encoder_features", "svd_basis", "level_1_latents", "level_2_latents"]


def cache_flags(result):
    return {a: result.asset_materializations_for_node(a)[0].metadata["cache"].value for a in ASSETS}


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

    basis = load_basis(plan["svd_basis"].path)
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
    svd_md = tiny_run["result"].asset_materializations_for_node("svd_basis")[0].metadata
    assert "data:image/png;base64," in svd_md["explained_variance"].value


def test_second_materialization_is_all_cache_hits(tiny_run):
    defs = build_definitions(tiny_run["cfg"], tiny_run["home"])
    again = materialize(list(defs.assets), instance=tiny_run["instance"])
    assert cache_flags(again) == {a: "hit" for a in ASSETS}
    for a in ASSETS:  # same data version as the first run
        first = tiny_run["result"].asset_materializations_for_node(a)[0].tags["dagster/data_version"]
        assert again.asset_materializations_for_node(a)[0].tags["dagster/data_version"] == first


@pytest.mark.parametrize("field,value", [("channels", 6), ("pool", 1)])
def test_changing_one_level_shape_recomputes_that_level_only(tiny_run, field, value):
    data = tiny_run["cfg"].model_dump(mode="json")
    data["levels"][1][field] = value
    cfg = parse_config(data)
    defs = build_definitions(cfg, tiny_run["home"])
    again = materialize(list(defs.assets), instance=DagsterInstance.ephemeral())
    assert cache_flags(again) == {a: "miss" if a == "level_2_latents" else "hit" for a in ASSETS}
    before = build_plan(tiny_run["cfg"], tiny_run["home"])
    after = build_plan(cfg, tiny_run["home"])
    changed = {a for a in before if before[a].code_version != after[a].code_version}
    assert changed == {"level_2_latents"}


def test_changing_sigma_keeps_every_latent(tiny_run):
    data = tiny_run["cfg"].model_dump(mode="json")
    data["levels"][0]["sigma"] = 2.0
    before = build_plan(tiny_run["cfg"], tiny_run["home"])
    after = build_plan(parse_config(data), tiny_run["home"])
    assert {a: s.fingerprint for a, s in before.items()} == {a: s.fingerprint for a, s in after.items()}


def test_definitions_refuse_an_invalid_config(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {source: digits}\nlevels:\n  - {pool: 2, channels: 4000, sigma: 1.0}\n")
    monkeypatch.setenv("NESTED_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=r"levels\[0\]\.channels"):
        build_definitions()
