"""The FID Inception file is the packaged copy, or one the config names: never one planted in a shared directory."""
import json
from pathlib import Path

import pytest

from pipeline import metrics
from pipeline.config import ConfigError, parse_config
from pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
OLD_TMP_PATH = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid downloads; anybody can write there


def tiny(**sampling) -> dict:
    import yaml

    data = json.loads(json.dumps(yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())))
    data["sampling"].update(sampling)
    return data


@pytest.fixture
def planted():
    """A file at clean-fid's /tmp path (left alone if someone's real download is there)."""
    if OLD_TMP_PATH.exists():
        yield OLD_TMP_PATH
        return
    OLD_TMP_PATH.write_bytes(b"not a TorchScript file: torch.jit.load must never see it")
    try:
        yield OLD_TMP_PATH
    finally:
        OLD_TMP_PATH.unlink(missing_ok=True)


def test_packaged_file_wins_over_tmp(planted):
    path = metrics.inception_path()
    assert path != planted and path == metrics._packaged_weights() and path.name == "default_1.pt"


def test_configured_file_is_used(tmp_path, planted):
    mine = tmp_path / "inception.pt"
    mine.write_bytes(b"x")
    assert metrics.inception_path(mine) == mine
    with pytest.raises(FileNotFoundError, match="sampling.inception_weights"):
        metrics.inception_path(tmp_path / "absent.pt")


def test_configured_file_resolved_checked_and_fingerprinted(tmp_path):
    mine = tmp_path / "inception.pt"
    mine.write_bytes(b"weights one")
    cfg = parse_config(tiny(inception_weights=str(mine)))
    assert cfg.sampling.inception_weights == mine
    rel = parse_config(tiny(inception_weights="configs/tiny.yaml"), check_files=False)
    assert rel.sampling.inception_weights == ROOT / "configs" / "tiny.yaml"  # relative to the project root

    with pytest.raises(ConfigError, match=r"sampling\.inception_weights: file not found"):
        parse_config(tiny(inception_weights=str(tmp_path / "absent.pt")))

    # The file moves the reference (and so the evaluation), never the samples.
    packaged = build_plan(parse_config(tiny()), tmp_path / "home")
    configured = build_plan(cfg, tmp_path / "home")
    assert packaged["samples"].fingerprint == configured["samples"].fingerprint
    assert packaged["reference_stats"].fingerprint != configured["reference_stats"].fingerprint
    assert packaged["evaluation"].fingerprint != configured["evaluation"].fingerprint
    mine.write_bytes(b"weights two, another length")  # its content, not its path, is the identity
    assert build_plan(cfg, tmp_path / "home")["reference_stats"].fingerprint != configured["reference_stats"].fingerprint
