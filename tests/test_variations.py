"""The variations asset, new images encoded as the latents stage encodes them, the lineage of one image, and the
labelled pictures."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from assets.testing import run_assets
from pipeline.config import ConfigError, parse_config
from pipeline.plan import build_plan
from pipeline.variations import kept_similarity, load_folder, variation_latents


def with_variations(cfg, **changes):
    return cfg.model_copy(update={"variations": cfg.variations.model_copy(update=changes)})


def test_similarity_grows_as_more_is_kept_on_a_planted_case():
    # Variations that keep more of the source sit closer to it: the measure must rank them so.
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    source = unit(rng.normal(size=(5, 32)))
    columns = {name: unit(source[:, None] + noise * rng.normal(size=(5, 3, 32)))
               for name, noise in [("none", 50.0), ("z2", 0.6), ("z1..z2", 0.1)]}
    table = kept_similarity(source, columns)
    means = [row["cosine_mean"] for row in table]
    assert [row["kept"] for row in table] == ["none", "z2", "z1..z2"]
    assert means[0] < 0.2 < means[1] < means[2] <= 1.0
    assert all(row["cosine_std"] > 0 and len(row["per_image"]) == 5 for row in table)


def test_new_images_encode_to_the_stored_latents(tiny_run):
    import io

    import webdataset as wds

    from pipeline.ingest import image_shards
    from pipeline.level_kinds import encode_images
    from pipeline.levels import read_latents

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    first = [s for _, s in zip(range(6), wds.WebDataset(image_shards(plan["images"].path), shardshuffle=False))]
    src, small = (np.stack([np.asarray(Image.open(io.BytesIO(s[f])).convert("RGB")) for s in first])
                  for f in ("src.png", "img.png"))
    encoded = encode_images(cfg, plan, src, small)
    for level in (1, 2):
        keys = {}
        for split in ("train", "holdout"):
            k, z, _ = read_latents(plan[f"level_{level}_latents"].path, split)
            keys.update(zip(k, z))
        stored = np.stack([keys[s["__key__"]] for s in first])
        np.testing.assert_allclose(encoded[level].numpy(), stored, atol=1e-4)


def test_variations_asset_keeps_the_sources_latents(tiny_run):
    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    md = tiny_run["result"].asset_materializations_for_node("variations")[0].metadata
    stage = plan["variations"]
    meta = stage.artifact.metadata()
    n, seeds = cfg.variations.num_images, cfg.variations.seeds
    assert meta["columns"] == ["none", "z2", "z1..z2"] and len(meta["sources"]) == n
    for row in meta["similarity"]:
        assert -1 <= row["cosine_mean"] <= 1 and len(row["per_image"]) == n
    assert "kept_similarity" in md and md["variations"].value.startswith("![variations](data:image/png;base64,")
    # The kept levels are the held-out images' own latents; the others were sampled.
    from pipeline.levels import read_latents

    _, real, _ = read_latents(plan["level_2_latents"].path, "holdout")
    z, _ = variation_latents(stage.path, "z2/seed1/3")
    np.testing.assert_array_equal(z[2], real[3])
    kept_both, _ = variation_latents(stage.path, "z1..z2/seed0/0")
    _, real1, _ = read_latents(plan["level_1_latents"].path, "holdout")
    np.testing.assert_array_equal(kept_both[1], real1[0])
    assert not np.array_equal(variation_latents(stage.path, "z2/seed0/0")[0][1], real1[0])
    # one row per source, the source then seeds x (none, z2, z1..z2) tiles, upscaled 3x with 2 px gaps
    w, h = Image.open(stage.path / "variations.png").size
    assert h > n * (16 * 3 + 2) and w >= (1 + 3 * seeds) * (16 * 3 + 2)
    with pytest.raises(ValueError, match="a variation id is"):
        variation_latents(stage.path, "z2-seed0")
    with pytest.raises(ValueError, match="columns are"):
        variation_latents(stage.path, "z3/seed0/0")


def test_variation_settings_move_only_the_variations(tiny_run):
    cfg = tiny_run["cfg"]
    before, after = build_plan(cfg, tiny_run["home"]), build_plan(with_variations(cfg, seeds=3), tiny_run["home"])
    moved = {name for name in before if before[name].fingerprint != after[name].fingerprint}
    assert moved == {"variations"}


def test_folder_images_are_varied_and_unreadable_ones_refused_by_name(tiny_run, tmp_path):
    cfg = tiny_run["cfg"]
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"mine{i}.png")
    (tmp_path / "notes.txt").write_text("not an image, not read")
    names, small, large = load_folder(cfg, tmp_path)
    assert names == ["mine0.png", "mine1.png"] and small.shape == (2, 16, 16, 3) and large.shape == (2, 32, 32, 3)
    assert tuple(small[0, 8, 8]) == (255, 0, 0)

    varied = with_variations(cfg, folder=tmp_path, num_images=2, seeds=1)
    result = run_assets(varied, tiny_run["home"], names=["variations"])
    meta = result.asset_materializations_for_node("variations")[0].metadata
    assert meta["sources"].value[-2:] == ["mine0.png", "mine1.png"] and len(meta["sources"].value) == 4

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="cannot read broken.png"):
        load_folder(cfg, tmp_path)


def test_missing_variations_folder_is_refused_at_load(tiny_cfg, tmp_path):
    data = json.loads(tiny_cfg.model_dump_json(exclude={"variants"}))
    data["variations"]["folder"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="variations.folder: not a folder"):
        parse_config(data)


def test_lineage_of_a_sample_a_variation_and_an_image_names_real_fingerprints(tiny_run, tmp_path, capsys):
    from pipeline.lineage import lineage

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    out = lineage(cfg, plan, "3", k=4, out=tmp_path / "sample.png")
    printed = capsys.readouterr().out
    for level in range(3):
        assert plan[f"level_{level}_model"].fingerprint in printed
        assert len(out["neighbours"][level]) == 4
    assert plan["samples"].fingerprint in printed and (tmp_path / "sample.png").is_file()

    out = lineage(cfg, plan, "z2/seed0/1", k=2, out=tmp_path / "variation.png")
    assert plan["level_2_latents"].fingerprint in out["made_by"][2]  # kept: the source's own latent
    assert plan["level_1_model"].fingerprint in out["made_by"][1]  # sampled from it
    assert plan["variations"].fingerprint in out["title"]

    Image.new("RGB", (20, 20), "green").save(tmp_path / "mine.png")
    out = lineage(cfg, plan, str(tmp_path / "mine.png"), k=2, out=tmp_path / "image.png")
    assert plan["level_1_latents"].fingerprint in out["made_by"][1] and plan["svd"].fingerprint in out["made_by"][2]
    with pytest.raises(ValueError, match="not in the samples artifact"):
        lineage(cfg, plan, "99999", out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="give a sample index"):
        lineage(cfg, plan, "banana", out=tmp_path / "x.png")


def test_neighbours_picture_is_labelled(tiny_run):
    from pipeline.neighbours import K

    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    meta = plan["level_neighbours"].artifact.metadata()
    w, h = Image.open(plan["level_neighbours"].path / "neighbours.png").size
    rows = len(meta["queries"]) * 3
    assert h > rows * (16 * 3 + 2) + 20  # a title and column headers above the rows
    assert w > (K + 1) * (16 * 3 + 2) + 40  # row labels at the left
    assert "labelled" in meta["layout"]
