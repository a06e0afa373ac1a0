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
    from pipeline.plan import Stage
    from pipeline.train import read_run_file, write_run_file

    cfg = parse_config(changed({"variants": {"v": {"levels.1.sigma": 0.0}}}), check_files=False)
    variant = variant_configs(cfg, check_files=False)["v"]
    plan = {"level_1_model": Stage("level_1_model", Artifact(tmp_path, "models", "f" * 16), "c" * 12, 1)}
    path = write_run_file(variant, plan, tmp_path)
    assert path.parent == tmp_path / "run_configs" and path.name.startswith("tiny__v-"), path
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    assert write_run_file(variant, plan, tmp_path) == path  # the same file the second time
    assert read_run_file(path) == (variant, plan)  # variants have none of their own
