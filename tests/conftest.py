import os
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_cfg():
    from pipeline.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory):
    """The tiny config materialized once into a temporary artifact root and Dagster instance."""
    from dagster import DagsterInstance, materialize

    from assets.definitions import build_definitions

    home = tmp_path_factory.mktemp("nested_home")
    instance = DagsterInstance.ephemeral()
    defs = build_definitions(tiny_cfg, home)
    result = materialize(list(defs.assets), instance=instance)
    assert result.success
    return {"cfg": tiny_cfg, "home": home, "instance": instance, "result": result}
