"""Hostile or broken config values are refused at load, naming the field, instead of failing (or escaping) later."""
import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, parse_config, variant_configs

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def changed(changes: dict) -> dict:
    """A copy of the tiny config with dotted keys set (integers index lists)."""
    data = json.loads(json.dumps(TINY))  # not yaml: its anchors share one train dict between levels
    for path, value in changes.items():
        node, *keys = data, *path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


HOSTILE = {
    # field named in the message: (changes, a word of the reason)
    "name_parent": ({"name": "../../x"}, "name", "'..'"),
    "name_absolute": ({"name": "/etc/x"}, "name", "absolute"),
    "name_backslash": ({"name": "a\\..\\b"}, "name", "backslash"),
    "name_dot_part": ({"name": "tiny/./x"}, "name", "'/'-separated"),
    "sigma_inf": ({"levels.0.sigma": float("inf")}, "levels[0].sigma", "finite"),
    "sigma_nan": ({"levels.1.sigma": float("nan")}, "levels[1].sigma", "finite"),
    "guidance_nan": ({"sampling.guidance": [0.1, float("nan")]}, "sampling.guidance[1]", "finite"),
    "encoder_mean_inf": ({"encoder.mean": [0.5, float("inf"), 0.5]}, "encoder.mean[1]", "finite"),
    "encoder_std_nan": ({"encoder.std": [0.5, 0.5, float("nan")]}, "encoder.std[2]", "finite"),
    "lr_nan": ({"levels.0.train.lr": float("nan")}, "levels[0].train.lr", "finite"),
    "level0_lr_inf": ({"level0.train.lr": float("inf")}, "level0.train.lr", "finite"),
    "vae_scale_nan": ({"level0.vae_scale": float("nan")}, "level0.vae_scale", "finite"),
    "holdout_zero": ({"dataset.holdout_fraction": 0}, "dataset.holdout_fraction", "greater than 0"),
    "seed_negative": ({"seed": -1}, "seed", "greater than or equal to 0"),
    "sampling_seed_negative": ({"sampling.seed": -1}, "sampling.seed", "greater than or equal to 0"),
    "num_samples_3": ({"sampling.num_samples": 3}, "sampling.num_samples", "k + 1"),
    "num_samples_0": ({"sampling.num_samples": 0}, "sampling.num_samples", "k + 1"),
    "reference_images_3": ({"sampling.reference_images": 3}, "sampling.reference_images", "k + 1"),
    "num_samples_huge": ({"sampling.num_samples": 1.0e12}, "sampling.num_samples", "the paper uses 50k"),
    "num_samples_string": ({"sampling.num_samples": "1e12"}, "sampling.num_samples", "integer"),
    "steps_above_timesteps": ({"sampling.steps": 50, "levels.1.train.num_train_timesteps": 20},
                              "sampling.steps", "levels[1].train.num_train_timesteps"),
    "steps_above_level0": ({"sampling.steps": 50, "level0.train.num_train_timesteps": 20},
                           "sampling.steps", "level0.train.num_train_timesteps"),
    "patch_level1": ({"levels.0.train.patch_size": 3}, "levels[0].train.patch_size", "levels[0].pool 4"),
    "patch_level0": ({"level0.train": {"backbone": "uvit", "size": "tiny", "patch_size": 3}},
                     "level0.train.patch_size", "dataset.resolution 16"),
    "patch_default": ({"dataset.resolution": 18, "level0.train": {"backbone": "uvit", "size": "tiny"}},
                      "level0.train.patch_size", "default"),
    "pool_above_resolution": ({"encoder.input_size": 128, "dataset.resolution": 4, "levels.0.pool": 8},
                              "levels[0].pool", "dataset.resolution 4"),
    "max_images_no_holdout": ({"dataset.max_images": 5}, "dataset.max_images", "no image"),
    "betas_above_one": ({"levels.0.train.betas": [0.9, 1.5]}, "levels[0].train.betas", "[0, 1)"),
    # Finite in float64, inf in the float32 tensors they scale: a NaN loss, not a refusal, before.
    "sigma_huge": ({"levels.0.sigma": 1e300}, "levels[0].sigma", "less than or equal to 100"),
    "lr_beyond_float32": ({"level0.train.lr": 1e39}, "level0.train.lr", "float32"),
    "guidance_weight_beyond_float32": ({"sampling.guidance": [0.1, -0.0, 1e39]}, "sampling.guidance", "float32"),
    # An extra weight would be dropped silently, as an extra level_steps entry is refused.
    "guidance_too_long": ({"sampling.guidance": [0.1, 0.2, 0.3, 0.4, 0.5]}, "sampling.guidance", "5 entries for 3 levels"),
    "level_steps_too_long": ({"sampling.level_steps": [5, 5, 5, 5]}, "sampling.level_steps", "4 entries for 3 levels"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_value_refused(case):
    changes, field, reason = HOSTILE[case]
    with pytest.raises(ConfigError) as e:
        parse_config(changed(changes), "test.yaml", check_files=False)
    msg = str(e.value)
    assert f"{field}:" in msg and reason in msg, msg


def test_variant_name_stays_valid():
    data = changed({"variants": {"sigma_top_0": {"levels.1.sigma": 0.0}}})
    cfg = parse_config(data, "test.yaml", check_files=False)
    (variant,) = variant_configs(cfg, check_files=False).values()
    assert variant.name == "tiny/sigma_top_0" and variant.levels[1].sigma == 0.0
    assert parse_config(changed({"name": "runs/tiny-v1.2_b"}), check_files=False).name == "runs/tiny-v1.2_b"


def test_hostile_variant_refused_under_its_name():
    with pytest.raises(ConfigError, match=r"variants\.bad: levels\[0\]\.sigma: .*finite"):
        parse_config(changed({"variants": {"bad": {"levels.0.sigma": float("inf")}}}), check_files=False)


def test_run_file_stays_under_home_and_reads_back(tmp_path):
    from pipeline.cache import Artifact
    from pipeline.stage import Stage
    from pipeline.run_file import read_run_file, write_run_file

    cfg = parse_config(changed({"variants": {"v": {"levels.1.sigma": 0.0}}}), check_files=False)
    variant = variant_configs(cfg, check_files=False)["v"]
    plan = {"level_1_model": Stage("level_1_model", Artifact(tmp_path, "models", "f" * 16), "c" * 12, 1)}
    path = write_run_file(variant, plan, tmp_path)
    assert path.parent == tmp_path / "run_configs" and path.name.startswith("tiny__v-"), path
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert write_run_file(variant, plan, tmp_path) == path  # the same file the second time
    assert read_run_file(path) == (variant, plan)  # variants have none of their own


def test_a_variant_with_fewer_levels_keeps_its_bases_weights_of_its_own_levels():
    # The sweeps' L = 1 baseline: level 0's weight of the base; a variant that sets too many itself is refused.
    cfg = parse_config(changed({"variants": {"L1": {"levels": []}}}), check_files=False)
    (l1,) = variant_configs(cfg, check_files=False).values()
    assert l1.num_levels == 1 and l1.guidance() == [0.1]
    with pytest.raises(ConfigError, match=r"variants\.L1: sampling\.guidance: 2 entries for 1 levels"):
        parse_config(changed({"variants": {"L1": {"levels": [], "sampling.guidance": [0.1, 0.2]}}}), check_files=False)


BOMB = """
variants:
  x:
    sampling:
      guidance: &a9 [&a8 [&a7 [&a6 [&a5 [&a4 [&a3 [&a2 [&a1 [1, 1, 1, 1, 1, 1, 1, 1, 1], *a1, *a1, *a1, *a1, *a1, *a1,
        *a1, *a1], *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2], *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3], *a4, *a4, *a4, *a4,
        *a4, *a4, *a4, *a4], *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5], *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6], *a7, *a7,
        *a7, *a7, *a7, *a7, *a7, *a7], *a8, *a8, *a8, *a8, *a8, *a8, *a8, *a8]
"""


def test_a_yaml_alias_bomb_in_a_variant_is_refused_before_it_expands(tmp_path):
    """Nine nested anchors are 9^9 values once copied out (the probe saw 4 GB in 40 s); refused with the field, and
    gc, which loads every config, reports that file and goes on."""
    import tracemalloc

    from pipeline.config import load_config
    from pipeline.gc import referenced

    path = tmp_path / "bomb.yaml"
    path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"variants\.x: sampling\.guidance: expands to more than 100,000 values"):
            load_config(path, check_files=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, peak
    found = referenced([path, ROOT / "configs" / "tiny.yaml"], tmp_path / "home")
    assert [u.config for u in found.unplanned] == [path] and "expands to more than" in found.unplanned[0].reason
    assert str(ROOT / "configs" / "tiny.yaml") in found.planned


def test_a_python_tag_is_refused_as_a_config_error_naming_the_file(tmp_path):
    from pipeline.config import load_config

    path = tmp_path / "tagged.yaml"
    path.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "extra: !!python/object/apply:os.system [echo]\n")
    with pytest.raises(ConfigError, match=rf"invalid config {path}: not plain YAML \(could not determine a "
                                          r"constructor for the tag 'tag:yaml\.org,2002:python/object/apply:os\.system'"):
        load_config(path, check_files=False)
