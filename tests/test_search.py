"""The sigma search (pipeline/search.py, assets/search.py): its rule, its refusals, and a search on tiny that
reuses every upstream artifact, samples only selection seeds and records its evidence."""
import json
import shutil
from pathlib import Path

import pytest

from assets.search import main, search_sigma
from pipeline.config import ConfigError
from pipeline.plan import build_plan
from pipeline.search import choose, grid_variants, selection_seeds


def test_the_rule_keeps_the_current_sigma_inside_two_stds():
    near = choose(1.0, {1.0: [60.0, 62.0], 1.5: [59.0, 61.0]})  # 1 point better, std 1.41
    assert near["best"] == 1.5 and near["chosen"] == 1.0 and not near["changed"]
    far = choose(1.0, {1.0: [60.0, 62.0], 1.5: [50.0, 51.0], 0.5: [70.0, 71.0]})  # 10.5 better, std 1.41
    assert far["chosen"] == 1.5 and far["changed"] and far["gap"] == pytest.approx(10.5)
    assert choose(1.0, {1.0: [60.0, 62.0], 0.5: [65.0, 66.0]})["chosen"] == 1.0  # the current one is the best


def test_selection_seeds_never_meet_the_reported_ones(tiny_cfg):
    reported = tiny_cfg.sampling.seed
    with pytest.raises(ConfigError, match="reported sampling seeds"):
        selection_seeds(tiny_cfg, reported - 1 if reported else 0, 2)
    with pytest.raises(ConfigError, match="at least 2"):
        selection_seeds(tiny_cfg, 1000, 1)
    with pytest.raises(ConfigError, match="--level 3"):
        grid_variants(tiny_cfg, 3, [0.5], [1000, 1001])  # tiny has L = 3: sigma_1 and sigma_2 only
    with pytest.raises(ConfigError, match="--grid"):
        grid_variants(tiny_cfg, 2, [-1.0], [1000, 1001])
    assert main(["sigma", "--config", "configs/tiny.yaml", "--level", "2", "--grid", "0.5",
                 "--first-selection-seed", str(reported)]) == 2  # refused before anything runs


def test_a_search_on_tiny_reuses_upstream_and_records_its_evidence(tiny_run, tmp_path):
    home = Path(shutil.copytree(tiny_run["home"], tmp_path / "home", ignore=shutil.ignore_patterns(".locks")))
    cfg = tiny_run["cfg"]
    before = {name: st.artifact.is_complete() for name, st in build_plan(cfg, home).items()}
    records = search_sigma(cfg, home, [2], [0.0], [1000, 1001], log=lambda m: None)
    (record,) = records
    assert record["current"] == cfg.level(2).sigma and set(record["per_sigma"]) == {"0", format(cfg.level(2).sigma, "g")}
    for run in record["runs"].values():
        assert len(run["fid_seeds"]) == 2
    # the rule, applied to the recorded FIDs, gives the recorded choice
    again = choose(record["current"], {float(s): r["fid_seeds"] for s, r in record["runs"].items()})
    assert again["chosen"] == record["chosen"]
    evidence = json.loads(Path(record["evidence"]).read_text())
    assert Path(record["evidence"]).parent == home / "searches" and evidence["selection_seeds"] == [1000, 1001]
    assert evidence["reported_seeds"] == [cfg.sampling.seed + i for i in range(cfg.sampling.eval_seeds)]

    # Upstream reused: the current sigma's variant has the experiment's own models; sigma 0's retrained only what
    # level 2 conditions (levels 0 and 1), on the experiment's latents and level 2's own model
    assert all(before.values())
    base = build_plan(cfg, home)
    zero = build_plan(grid_variants_config(cfg, 0.0), home)
    for name in ("images", "encoder_features", "svd", "level_1_latents", "level_2_latents", "level_2_model"):
        assert zero[name].fingerprint == base[name].fingerprint
    for name in ("level_0_model", "level_1_model"):
        assert zero[name].fingerprint != base[name].fingerprint and zero[name].artifact.is_complete()
    assert len(list((home / "models").glob("*/_COMPLETE.json"))) == len(list(
        (tiny_run["home"] / "models").glob("*/_COMPLETE.json"))) + 2


def grid_variants_config(cfg, sigma):
    from assets.search import with_sigma

    return with_sigma(cfg, 2, sigma)


def test_a_variant_equal_to_the_base_materializes_the_bases_evaluation(tiny_run):
    """A variant that changes nothing owns no asset: its evaluation is the base's, read as a cache hit."""
    from dagster import AssetKey

    from assets.definitions import materialize_variants

    cfg, home = tiny_run["cfg"], tiny_run["home"]
    configs, result = materialize_variants(cfg, home, {"same": {"sampling.seed": cfg.sampling.seed}})
    assert result.success and build_plan(configs["same"], home)["evaluation"].fingerprint == \
        build_plan(cfg, home)["evaluation"].fingerprint
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    assert AssetKey(["evaluation"]) in done and not any(k.path[0] == "same" for k in done)
