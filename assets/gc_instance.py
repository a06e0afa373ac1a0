"""Which artifacts recent materializations refer to, for ``python -m pipeline.gc`` (which imports this lazily).

Every asset's materialization metadata holds its artifact's `fingerprint` and `path` (assets/factory.py); this
reads them from the instance in $DAGSTER_HOME (default .dagster_home/, as the Makefile's) through Dagster's
public API: the instance's asset keys, and each key's materializations after a time.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from dagster import AssetRecordsFilter, DagsterInstance

from pipeline.gc import Recent

from .stale import dagster_home

PAGE = 1000


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _value(v):
    return getattr(v, "value", v)  # a MetadataValue's raw value (PathMetadataValue: the path as a string)


def references_in(instance, since: float) -> tuple[Recent, int]:
    """What the materializations after `since` (a Unix time) refer to, the latest of each named; and their count."""
    recent, count = Recent(), 0
    for key in instance.get_asset_keys():
        cursor = None
        while True:
            page = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, after_timestamp=since),
                                                   limit=PAGE, cursor=cursor)  # newest first
            for record in page.records:
                mat = record.asset_materialization
                metadata = mat.metadata if mat is not None else {}
                count += 1
                what = f"{key.to_user_string()}, {_when(record.timestamp)}"
                if fp := _value(metadata.get("fingerprint")):
                    recent.fingerprints.setdefault(str(fp), what)
                if path := _value(metadata.get("path")):
                    recent.paths.setdefault(Path(str(path)).resolve(), what)
            if not page.has_more:
                break
            cursor = page.cursor
    return recent, count


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """dagster.yaml names its storage through {env: DAGSTER_HOME}: set it for the instance read here."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def recent_references(since: float, home: Path | None = None) -> Recent:
    """What the materializations after `since` in the instance at `home` (default $DAGSTER_HOME) refer to. No
    instance: nothing (every asset would read never materialized); one that cannot be read: `error` says why."""
    home = Path(home) if home else dagster_home()
    if not home.is_dir():
        return Recent(source=f"none (no instance at {home})")
    try:
        with _env("DAGSTER_HOME", str(home)), DagsterInstance.from_config(str(home)) as instance:
            recent, count = references_in(instance, since)
    except Exception as e:  # e.g. an unreachable PostgreSQL instance: gc must not take that for "nothing recent"
        return Recent(source=f"the instance at {home}", error=f"{type(e).__name__}: {e}")
    recent.source = (f"{count} since {_when(since)} in the instance at {home}, referring to "
                     f"{len(recent.fingerprints)} artifacts")
    return recent
