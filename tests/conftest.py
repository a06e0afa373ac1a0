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
    from dagster import DagsterInstance

    home = tmp_path_factory.mktemp("nested_home")
    instance = DagsterInstance.ephemeral()
    result = run_assets(tiny_cfg, home, instance)
    assert result.success
    return {"cfg": tiny_cfg, "home": home, "instance": instance, "result": result}


def run_assets(cfg, home, instance=None, names=None, **kwargs):
    """Materialize the experiment's assets (or those named) the way the code location defines them."""
    from dagster import DagsterInstance, materialize

    from assets.definitions import build_definitions

    defs = build_definitions(cfg, home)
    assets = [a for a in defs.assets if names is None or a.key.to_user_string() in names]
    checks = [c for c in defs.asset_checks if names is None or c.check_key.asset_key.to_user_string() in names]
    return materialize([*assets, *checks], instance=instance or DagsterInstance.ephemeral(),
                       resources=defs.resources, selection=names, **kwargs)
