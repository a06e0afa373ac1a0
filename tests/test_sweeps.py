"""Sweeps: a config's variants become prefixed assets for what they change and share everything else."""
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey

from assets.definitions import build_definitions
from pipeline.config import ConfigError, apply_overrides, parse_config, variant_configs
from pipeline.plan import build_plan
from pipeline.table import TABLE


def with_variants(cfg, variants):
    return parse_config({**cfg.model_dump(mode="json"), "variants": variants})


def test_overrides_set_merge_and_replace():
    data = {"levels": [{"sigma": 0.5, "pool": 4}, {"sigma": 1.0}], "sampling": {"steps": 25, "seed": 0}}
    out = apply_overrides(data, {"levels.1.sigma": 0.0, "sampling": {"steps": 50}})
    assert out == {"levels": [{"sigma": 0.5, "pool": 4}, {"sigma": 0.0}], "sampling": {"steps": 50, "seed": 0}}
    assert apply_overrides(data, {"levels": []})["levels"] == [] and data["levels"][1]["sigma"] == 1.0
    with pytest.raises(ConfigError, match=r"levels\.5\.sigma: no such field"):
        apply_overrides(data, {"levels.5.sigma": 0.0})


def test_a_dotted_key_edits_only_its_own_variant_when_yaml_anchors_share_a_value(tiny_cfg, tmp_path):
    """`levels: *levels` then `levels.0.sigma` in one variant must not reach another variant (or the base) that
    holds the same anchored list: each variant gets its own copy of what it replaces."""
    import yaml

    text = yaml.safe_dump({k: v for k, v in tiny_cfg.model_dump(mode="json").items() if k != "variants"})
    text += ("variants:\n  short: &short\n    levels: &lv [{pool: 4, channels: 16, sigma: 0.5}]\n"
             "  short_s0: {<<: *short, levels.0.sigma: 0.0}\n  short_again: {levels: *lv}\n")
    path = tmp_path / "anchors.yaml"
    path.write_text(text)
    from pipeline.config import load_config
    from pipeline.fingerprints import config_fingerprint

    cfg = load_config(path, check_files=False)
    v = variant_configs(cfg, check_files=False)
    assert v["short_s0"].levels[0].sigma == 0.0
    assert v["short"].levels[0].sigma == 0.5 and v["short_again"].levels[0].sigma == 0.5
    assert config_fingerprint(v["short"]) == config_fingerprint(v["short_again"]) != config_fingerprint(v["short_s0"])
    assert cfg.variants["short"]["levels"][0]["sigma"] == 0.5  # the parsed config itself is untouched


def test_a_dotted_key_edits_one_level_when_yaml_aliases_make_two_levels_share_their_train_mapping():
    """`levels: [{train: *t}, {train: *t}]` is one mapping in two places; `levels.0.train.steps` sets one level."""
    import yaml

    shared = yaml.safe_load("t: &t {steps: 10}\nv: {levels: [{train: *t}, {train: *t}], levels.0.train.steps: 30}")
    out = apply_overrides({"levels": []}, shared["v"])
    assert [lv["train"]["steps"] for lv in out["levels"]] == [30, 10]
    assert shared["t"]["steps"] == 10


def test_bad_variants_are_refused_with_their_name(tiny_cfg):
    with pytest.raises(ConfigError, match=r"variants\.neg: .*levels\[1\]\.sigma"):
        with_variants(tiny_cfg, {"neg": {"levels.1.sigma": -1.0}})
    with pytest.raises(ConfigError, match=r"variants\.typo: levels\.0\.sigmaa: no such field"):
        with_variants(tiny_cfg, {"typo": {"levels.0.sigmaa": 1.0}})  # refused before its value is copied
    with pytest.raises(ConfigError, match="variant name"):
        with_variants(tiny_cfg, {"sigma 0": {"levels.1.sigma": 0.0}})
    with pytest.raises(ConfigError, match=r"variants\.far: levels\.9\.sigma: no such field"):
        with_variants(tiny_cfg, {"far": {"levels.9.sigma": 0.0}})


def test_variants_own_only_what_they_change(tiny_cfg, tmp_path):
    levels = tiny_cfg.model_dump(mode="json")["levels"]
    cfg = with_variants(tiny_cfg, {"L1": {"levels": []}, "L2": {"levels": levels[:1]}, "sigma0": {"levels.1.sigma": 0.0}})
    assert {n: v.name for n, v in variant_configs(cfg).items()} == {n: f"tiny/{n}" for n in ("L1", "L2", "sigma0")}
    defs = build_definitions(cfg, tmp_path)
    keys = {a.key.to_user_string(): a for a in defs.assets}
    base = build_plan(cfg, tmp_path)
    assert {k for k in keys if "/" not in k} == set(base)
    models = lambda v, n: {f"{v}/level_{j}_model" for j in range(n)}  # noqa: E731
    # a plain diffusion model keeps no latents: L1 has no variations
    assert {k for k in keys if k.startswith("L1/")} == models("L1", 1) | {"L1/samples", "L1/evaluation"}
    assert {k for k in keys if k.startswith("L2/")} == models("L2", 2) | {"L2/samples", "L2/evaluation", "L2/variations"}
    # sigma of the coarsest level: every model it conditions is retrained, its own model is shared
    assert {k for k in keys if k.startswith("sigma0/")} == models("sigma0", 2) | {"sigma0/samples", "sigma0/evaluation",
                                                                             "sigma0/variations"}
    deps = {k.to_user_string() for k in keys["sigma0/samples"].asset_deps[AssetKey(["sigma0", "samples"])]}
    assert deps == {"sigma0/level_0_model", "sigma0/level_1_model", "level_2_model"}
    assert keys["L2/level_0_model"].asset_deps[AssetKey(["L2", "level_0_model"])] == {
        AssetKey("images"), AssetKey("level_1_latents")}
    assert {j.name for j in defs.jobs} >= {"all_assets", "experiment", "sweep"}


def test_sweep_runs_share_upstream_and_land_in_the_evaluation_table(tiny_run):
    cfg = with_variants(tiny_run["cfg"], {"L1": {"levels": []}, "sigma0": {"levels.1.sigma": 0.0}})
    defs = build_definitions(cfg, tiny_run["home"])
    result = defs.resolve_job_def("sweep").execute_in_process(instance=tiny_run["instance"])
    assert result.success
    flags = {e.materialization.asset_key.to_user_string(): e.materialization.metadata["cache"].value
             for e in result.get_asset_materialization_events()}
    own = {k for k in flags if "/" in k}
    assert own == {"L1/level_0_model", "L1/samples", "L1/evaluation", "sigma0/level_0_model", "sigma0/level_1_model",
                   "sigma0/samples", "sigma0/evaluation", "sigma0/variations"}
    assert {k: v for k, v in flags.items() if k in own} == dict.fromkeys(own, "miss")
    assert {k: v for k, v in flags.items() if k not in own} == dict.fromkeys(set(flags) - own, "hit")
    rows = pq.read_table(tiny_run["home"] / TABLE).to_pylist()
    mine = {r["variant"]: r for r in rows if r["experiment"].startswith("tiny/")}
    assert set(mine) == {"L1", "sigma0"} and mine["L1"]["L"] == 1 and mine["sigma0"]["sigmas"] == [0.5, 0.0]
    assert mine["L1"]["gflops_per_image"] < mine["sigma0"]["gflops_per_image"]
    # the oracle (level 0 from real coarser latents) exists for nested runs only
    assert mine["L1"]["oracle_fid"] is None and mine["sigma0"]["oracle_fid"] > 0
    assert len({r["config_fingerprint"] for r in mine.values()}) == 2
