"""Level kinds on tiny: MSF's pixel base (level 0 learns the residual) and a cascade (level 0 conditioned on the
low-resolution image) through the same assets, caching and checks as the semantic levels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from assets.testing import run_assets
from pipeline.config import ConfigError, load_config, parse_config
from pipeline.fingerprints import config_fingerprint
from pipeline.data import iter_pixels
from pipeline.level_kinds import load_level_data
from pipeline.levels import load_stats, read_latents
from pipeline.pixel_levels import add_base, destandardize, downsample, upsample
from pipeline.plan import build_plan

EVAL = {"samples", "evaluation", "variations"}


def kinds_config(kind: str = "pixel_base", **sampling):
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    train = data["levels"][0]["train"]
    data["levels"] = [{"kind": kind, "pool": 8, "channels": 3, "sigma": 0.1, "train": train}]
    data["sampling"] = {**data["sampling"], "guidance": [0.1, 0.0], "level_steps": [3], **sampling}
    data["name"] = f"tiny_{kind}"
    return parse_config(data)


@pytest.fixture(scope="module")
def msf(tmp_path_factory):
    home = tmp_path_factory.mktemp("kinds")
    cfg = kinds_config()
    # what the level kinds change, not the evaluation (the FID stage is the same code for every kind)
    result = run_assets(cfg, home, names=["images", "level_1_latents", "level_1_model", "level_0_model", "samples"])
    assert result.success
    return {"cfg": cfg, "home": home, "plan": build_plan(cfg, home), "result": result}


def test_a_pixel_level_is_level_0_area_averaged_and_standardized(msf):
    plan = msf["plan"]
    keys, z, _ = read_latents(plan["level_1_latents"].path, "holdout")
    pixels = dict((k, x) for k, x, _ in iter_pixels(plan["images"].path, "holdout"))
    x = torch.from_numpy(np.stack([pixels[k] for k in keys]))
    stats = load_stats(plan["level_1_latents"].path)
    expected = (x.reshape(len(x), 3, 8, 2, 8, 2).mean((3, 5)).numpy() - stats["mean"][:, None, None]) / stats["std"][:, None, None]
    np.testing.assert_allclose(z, expected, atol=1e-5)
    _, zt, _ = read_latents(plan["level_1_latents"].path, "train")
    np.testing.assert_allclose(zt.mean((0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(zt.std((0, 2, 3)), 1, atol=1e-3)
    checks = msf["result"].get_asset_check_evaluations()
    assert checks and all(e.passed for e in checks)
    assert {e.check_name for e in checks if e.asset_key.to_user_string() == "level_1_latents"} >= {"standardized"}


def test_the_pixel_level_reads_the_images_not_the_encoder(msf):
    from assets.definitions import build_definitions

    defs = build_definitions(msf["cfg"], msf["home"])
    spec = next(s for s in defs.resolve_all_asset_specs() if s.key.to_user_string() == "level_1_latents")
    assert {d.asset_key.to_user_string() for d in spec.deps} == {"images"}
    data = msf["cfg"].model_dump(mode="json")
    data["encoder"]["input_size"] = 96
    other = build_plan(parse_config(data), msf["home"])
    assert other["encoder_features"].fingerprint != msf["plan"]["encoder_features"].fingerprint
    assert other["level_1_latents"].fingerprint == msf["plan"]["level_1_latents"].fingerprint  # no input of it


def test_level_0_learns_the_residual_over_the_base(msf):
    cfg, plan = msf["cfg"], msf["plan"]
    data = load_level_data(cfg, plan, 0)
    pixels = torch.from_numpy(np.stack([x for _, x, _ in iter_pixels(plan["images"].path, "train")]))
    assert data.target["residual"]["level"] == 1
    assert data.x.std().item() == pytest.approx(1.0, abs=1e-3)  # scaled to unit std
    rebuilt = add_base(data.x, data.conds[0], data.target["residual"])
    torch.testing.assert_close(rebuilt, pixels, atol=1e-5, rtol=0)
    # the residual is what the upsampled base lacks: it carries less than the image
    base = upsample(downsample(pixels, 8), (16, 16))
    assert ((pixels - base) ** 2).mean() < 0.5 * ((pixels - pixels.mean()) ** 2).mean()
    meta = plan["level_0_model"].artifact.metadata()
    curve = [loss for _, loss in meta["loss_curve"]]
    assert curve[-1] < curve[0]
    from pipeline.model_io import read_spec

    assert read_spec(plan["level_0_model"].path)["residual"]["scale"] == pytest.approx(data.target["residual"]["scale"])


def test_sampling_adds_the_generated_base_and_takes_each_levels_steps(msf, monkeypatch):
    import pipeline.sample as sample_mod

    cfg, plan = msf["cfg"], msf["plan"]
    real, steps_seen = sample_mod.sample_level, {}

    def spy(model, spec, conds, n, steps, *args, **kwargs):
        level = 0 if spec["in_shape"][1] == 16 else 1
        steps_seen[level] = steps
        out = real(model, spec, conds, n, steps, *args, **kwargs)
        return torch.zeros_like(out) if level == 0 else out  # a residual of zeros: the image is the base alone

    monkeypatch.setattr(sample_mod, "sample_level", spy)
    gen = sample_mod.sample_hierarchy(cfg, plan, 6, seed=3)  # the config's sampling plan
    assert steps_seen == {0: 3, 1: 5}  # level_steps [3] for level 0, sampling.steps for the rest
    stats = load_stats(plan["level_1_latents"].path)
    expected = upsample(destandardize(gen[1], stats["mean"], stats["std"]), (16, 16))
    torch.testing.assert_close(gen[0], expected, atol=1e-5, rtol=0)
    samples = plan["samples"].artifact.metadata()
    assert samples["num_samples"] == cfg.sampling.num_samples and samples["level_steps"] == [3, 5]


def test_sampling_cost_counts_each_levels_steps(msf):
    from pipeline.costs import cost_table

    cfg = msf["cfg"]
    table = cost_table(cfg)
    g0, g1 = (r["gflops_per_forward"] for r in table["levels"])
    assert table["sampling_gflops_per_image"] == pytest.approx(3 * 2 * g0 + 5 * g1)  # level 0 guided (w = 0.1)


def test_a_cascade_shares_the_base_and_conditions_on_it(msf):
    cfg = kinds_config("cascade")
    plan, home = build_plan(cfg, msf["home"]), msf["home"]
    for name in ("images", "level_1_latents", "level_1_model"):  # the base generator is the same network
        assert plan[name].fingerprint == msf["plan"][name].fingerprint
    moved = {n for n in plan if plan[n].fingerprint != msf["plan"][n].fingerprint}
    assert moved == {"level_0_model"} | EVAL
    data = load_level_data(cfg, plan, 0)
    pixels = torch.from_numpy(np.stack([x for _, x, _ in iter_pixels(plan["images"].path, "train")]))
    assert "residual" not in data.target and torch.equal(data.x, pixels) and data.conds[0].shape[1:] == (3, 8, 8)
    result = run_assets(cfg, home, names=["level_1_latents", "level_1_model", "level_0_model"])
    assert [result.asset_materializations_for_node(n)[0].metadata["cache"].value
            for n in ("level_1_latents", "level_1_model", "level_0_model")] == ["hit", "hit", "miss"]
    from pipeline.model_io import read_spec

    assert "residual" not in read_spec(plan["level_0_model"].path)


def test_level_steps_move_only_the_samples(msf):
    cfg = kinds_config(level_steps=[2])
    plan = build_plan(cfg, msf["home"])
    assert {n for n in plan if plan[n].fingerprint != msf["plan"][n].fingerprint} == EVAL


def test_configs_without_the_new_fields_keep_their_fingerprints():
    cfg = load_config("configs/tiny.yaml")
    data = cfg.model_dump(mode="json")
    assert data["levels"][0]["kind"] == "semantic" and data["sampling"]["level_steps"] == []
    for lv in data["levels"]:
        del lv["kind"]
    del data["sampling"]["level_steps"]
    for later in ("pr_reference", "reference_npz"):  # added later still (issue 34), at their defaults here
        del data["sampling"][later]
    from pipeline.cache import stable_hash
    from pipeline.ingest import source_fingerprint

    dump = {k: v for k, v in data.items() if k not in {"variants", "name", "variations", "compute"}}
    del dump["dataset"]["path"]
    dump["dataset"]["source_fingerprint"] = source_fingerprint(cfg.dataset)
    assert config_fingerprint(cfg) == stable_hash(dump)  # the hash of the dump as it was before these fields


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["levels"].insert(1, {"kind": "cascade", "pool": 2, "channels": 3, "sigma": 0.1}), "levels[1].kind"),
    (lambda d: d["levels"][0].update(kind="pixel_base", pool=8, channels=4), "levels[0].channels"),
    (lambda d: d["levels"][0].update(kind="cascade", pool=3, channels=3), "levels[0].pool"),
    (lambda d: d["levels"][0].update(kind="fourier"), "levels[0].kind"),
    (lambda d: d["sampling"].update(level_steps=[2, 2, 2, 2]), "sampling.level_steps"),
    (lambda d: d["sampling"].update(level_steps=[0]), "sampling.level_steps"),
    (lambda d: d["sampling"].update(level_steps=[5000]), "sampling.level_steps[0]"),
])
def test_bad_kinds_and_steps_are_refused_by_field(edit, field):
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    data["levels"], data["sampling"]["guidance"] = data["levels"][:1], data["sampling"]["guidance"][:2]
    edit(data)
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert field in str(e.value)


def test_a_matryoshka_level_0_trains_checks_and_samples_through_the_assets(msf):
    """MDM's joint resolutions as level 0 of plain diffusion: the model's checks pass on its extended state, the
    loss falls and sampling keeps the finest resolution."""
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    data.update(name="tiny_matryoshka", levels=[], sampling={**data["sampling"], "guidance": data["sampling"]["guidance"][:1]})
    data["level0"]["train"] = {**data["level0"]["train"], "backbone": "matryoshka"}
    cfg, home = parse_config(data), msf["home"]
    result = run_assets(cfg, home, names=["images", "level_0_model", "samples"])
    assert result.success
    checks = [e for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == "level_0_model"]
    assert {e.check_name for e in checks} >= {"checkpoint_loads"} and all(e.passed for e in checks)
    plan = build_plan(cfg, home)
    from pipeline.model_io import read_spec

    spec = read_spec(plan["level_0_model"].path)
    assert spec["matryoshka"]["image_shape"] == [3, 16, 16]
    curve = [loss for _, loss in plan["level_0_model"].artifact.metadata()["loss_curve"]]
    assert curve[-1] < curve[0]
    assert plan["samples"].artifact.metadata()["num_samples"] == cfg.sampling.num_samples


def test_semantic_levels_over_a_pixel_base_condition_every_finer_level(msf):
    """Nested semantic latents above MSF's pixel base (configs/families_cpu.yaml's nested_msf): the 8x8 base
    generator is conditioned on the semantic levels, the residual on all three; the pixel level's data is MSF's."""
    from pipeline.model_io import read_spec

    tiny = load_config("configs/tiny.yaml").model_dump(mode="json")
    data = msf["cfg"].model_dump(mode="json")
    data.update(name="tiny_nested_msf", levels=data["levels"] + tiny["levels"])
    data["sampling"]["guidance"] = [0.1, 0.0, 0.3, 0.5]
    cfg, home = parse_config(data), msf["home"]
    result = run_assets(cfg, home, names=["images", "encoder_features", "svd", "level_1_latents", "level_2_latents",
                                          "level_3_latents", "level_1_model", "level_0_model", "level_2_model",
                                          "level_3_model", "samples"])
    assert result.success
    plan = build_plan(cfg, home)
    assert plan["level_1_latents"].fingerprint == msf["plan"]["level_1_latents"].fingerprint
    assert result.asset_materializations_for_node("level_1_latents")[0].metadata["cache"].value == "hit"
    specs = {lv: read_spec(plan[f"level_{lv}_model"].path) for lv in range(4)}
    assert [specs[lv]["condition_levels"] for lv in range(4)] == [[1, 2, 3], [2, 3], [3], []]
    assert specs[1]["in_shape"] == [3, 8, 8] and specs[1]["cond_shapes"] == [[16, 4, 4], [8, 2, 2]]
    assert specs[0]["residual"]["level"] == 1 and "residual" not in specs[1]
    from pipeline.sample import sample_hierarchy

    gen = sample_hierarchy(cfg, plan, 4, seed=0)
    assert gen[0].shape == (4, 3, 16, 16) and gen[1].shape == (4, 3, 8, 8) and gen[3].shape == (4, 8, 2, 2)
    assert torch.isfinite(gen[0]).all()
    # the residual carries less than the image: the image stays near its generated 8x8 base, upsampled
    stats = load_stats(plan["level_1_latents"].path)
    base = upsample(destandardize(gen[1], stats["mean"], stats["std"]), (16, 16))
    assert ((gen[0] - base) ** 2).mean() < ((gen[0] - gen[0].mean()) ** 2).mean()
