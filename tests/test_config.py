from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def with_change(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    node[int(last) if last.isdigit() else last] = value
    return data


def refused(data, field: str, reason: str):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "test.yaml")
    msg = str(e.value)
    assert field in msg, msg
    assert reason in msg, msg
    return msg


def test_tiny_config_loads(tiny_cfg):
    assert tiny_cfg.num_levels == 3
    assert [lv.pool for lv in tiny_cfg.levels] == [4, 2]


def test_channels_above_encoder_refused():
    refused(with_change("levels.0.channels", 113), "levels[0].channels", "112 channels")


def test_pool_above_feature_grid_refused():
    refused(with_change("levels.0.pool", 5), "levels[0].pool", "4x4 feature grid")


def test_shapes_must_shrink():
    refused(with_change("levels.1", {"pool": 4, "channels": 16, "sigma": 1.0}), "levels[1]", "same shape")
    data = with_change("levels.1.channels", 32)
    refused(data, "levels[1].channels", "shapes must shrink")
    data = with_change("levels.0.pool", 1)
    refused(data, "levels[1].pool", "shapes must shrink")


def test_negative_sigma_refused():
    refused(with_change("levels.1.sigma", -0.5), "levels[1].sigma", "greater than or equal to 0")


def test_unknown_encoder_refused():
    refused(with_change("encoder.name", "no_such_net"), "encoder.name", "no_such_net")


def test_unknown_layer_refused():
    refused(with_change("encoder.layer", "blocks.99"), "encoder.layer", "blocks.99")


def test_unknown_dataset_refused():
    refused(with_change("dataset.source", "imagenet21k"), "dataset.source", "emoji")


def test_unknown_field_refused():
    refused(with_change("dataset.resolutoin", 32), "dataset.resolutoin", "Extra inputs")


def test_missing_files_refused(tmp_path):
    data = with_change("dataset.source", "folder")
    data["dataset"]["path"] = str(tmp_path / "nowhere")
    refused(data, "dataset.path", "not found")
    refused(with_change("encoder.weights", str(tmp_path / "missing.pth")), "encoder.weights", "missing.pth")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_env_config_and_relative_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("NESTED_CONFIG", str(ROOT / "configs" / "tiny.yaml"))
    assert load_config().name == "tiny"
    data = with_change("dataset.source", "npz")
    data["dataset"]["path"] = "configs/tiny.yaml"  # any existing file: resolved against the project root
    cfg = parse_config(data, check_files=False)
    assert cfg.dataset.path == ROOT / "configs" / "tiny.yaml"


@pytest.mark.parametrize("name", ["emoji", "emoji_gpu", "ablation_cpu", "ablation_gpu", "imagenet256_mocov3", "coco_clip"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", check_files=False)
    assert cfg.num_levels >= 3


def test_unknown_model_size_refused():
    refused(with_change("levels.0.train", {"backbone": "unet", "size": "XXL"}), "levels[0].train.size", "tiny")


def test_negative_guidance_refused():
    refused(with_change("sampling.guidance", [0.1, -1.0]), "sampling", "must be >= 0")


@pytest.mark.parametrize("url", ["s3://bucket/nested", "gs://b/x", "file:///tmp/x"])
def test_a_url_as_nested_home_is_refused_naming_what_a_cluster_needs(url, monkeypatch):
    from pipeline.config import ConfigError, nested_home

    monkeypatch.setenv("NESTED_HOME", url)
    with pytest.raises(ConfigError, match="NESTED_HOME: .* is a URL; artifacts need a mounted filesystem"):
        nested_home()


@pytest.mark.parametrize("compute,field,reason", [
    ({"engine": "spark"}, "compute.engine", "'local', 'ray' or 'k8s'"),
    ({"engine": "ray", "ray": {"workers": 0}}, "compute.ray.workers", "greater than or equal to 1"),
    ({"engine": "ray", "ray": {"gpus_per_worker": -1}}, "compute.ray.gpus_per_worker", "greater than or equal to 0"),
])
def test_bad_compute_settings_are_refused_by_field(compute, field, reason):
    refused(with_change("compute", compute), field, reason)


def test_the_engine_changes_no_fingerprint():
    from pipeline.fingerprints import config_fingerprint

    fps = {config_fingerprint(parse_config(with_change("compute", c), "t.yaml")) for c in (
        {"engine": "local"}, {"engine": "ray", "ray": {"address": "auto", "workers": 8}},
        {"engine": "k8s", "k8s": {"image": "img:1"}})}
    assert len(fps) == 1
