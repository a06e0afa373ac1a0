import os

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_cfg():
    from pipeline.config import PROJECT_ROOT, load_config

    return load_config(PROJECT_ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tmp_path_factory):
    """The tiny config materialized once into a temporary artifact root and Dagster instance."""
    from dagster import DagsterInstance

    from assets.testing import run_assets

    home = tmp_path_factory.mktemp("nested_home")
    instance = DagsterInstance.ephemeral()
    result = run_assets(tiny_cfg, home, instance)
    assert result.success
    return {"cfg": tiny_cfg, "home": home, "instance": instance, "result": result}
