"""The instance settings we ship: SQLite for one user (dagster.yaml), PostgreSQL for a team (deploy/)."""
import shutil

import pytest
from dagster import DagsterInstance, DagsterInvalidConfigError
from dagster_shared.check import CheckError  # dagster's own dependency; dagster._check re-exports it
# No public API validates an instance config without opening its storage (a PostgreSQL server here).
from dagster._core.instance.config import dagster_instance_config

from pipeline.config import PROJECT_ROOT


def home_with(tmp_path, source):
    shutil.copy(source, tmp_path / "dagster.yaml")
    return tmp_path


def test_default_instance_is_sqlite_under_dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(home_with(tmp_path, PROJECT_ROOT / "dagster.yaml")))
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert not instance.telemetry_enabled
    assert (tmp_path / "history").is_dir()  # the run database sits in $DAGSTER_HOME


def test_team_instance_config_is_valid_postgres(tmp_path):
    config, _ = dagster_instance_config(str(home_with(tmp_path, PROJECT_ROOT / "deploy" / "dagster_postgres.yaml")))
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}  # secrets come from the environment
    (tmp_path / "dagster.yaml").write_text((tmp_path / "dagster.yaml").read_text().replace("hostname", "hostnam"))
    with pytest.raises((DagsterInvalidConfigError, CheckError), match="hostnam"):
        dagster_instance_config(str(tmp_path))
