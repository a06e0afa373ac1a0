"""The evaluation table, ``$NESTED_HOME/evaluations.parquet``: a view over the evaluation artifacts.

Each evaluation artifact carries its own row in its marker, written atomically with the rest of the artifact,
so a row can never be lost between publishing an evaluation and recording it, nor written twice by two runs.
The Parquet file is an export of those rows, rebuilt under a lock after every evaluation (cache hits
included, so an export that failed, e.g. on a full disk, is repaired by the next run). Rows of evaluations
whose artifacts were since removed stay in the table: it is the experiments' history.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .cache import FINGERPRINT_PATTERN, MARKER, Artifact

TABLE = "evaluations.parquet"
KEY = "evaluation_fingerprint"


def evaluation_rows(home: Path) -> list[dict]:
    """The row of every published evaluation artifact under `home`, one per fingerprint, oldest first.

    Only ``evaluation/<fingerprint>/`` is published: a build in progress (``<fingerprint>.tmp-*``) or a damaged
    copy set aside (``<fingerprint>.damaged-*``) may hold a marker too, and its row is not another evaluation."""
    folder = Path(home) / "evaluation"
    rows = []
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not re.fullmatch(FINGERPRINT_PATTERN, d.name) or d.is_symlink():
            continue
        try:
            row = json.loads((d / MARKER).read_text()).get("row")
        except (OSError, ValueError):
            continue  # no marker, or a damaged one: its artifact is rebuilt on the next run, with its row
        if isinstance(row, dict) and row.get(KEY) == d.name:
            rows.append(row)
    return sorted(rows, key=lambda r: (r.get("evaluated_at") or "", r[KEY]))


def _table(rows: list[dict]) -> pa.Table | None:
    # One row at a time, then permissive concatenation: rows written by older code may lack newer columns.
    tables = [pa.Table.from_pylist([r]) for r in rows]
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def export_table(home: Path) -> Path:
    """Rewrite the table from the artifacts' rows plus the rows it already held for removed artifacts."""
    home = Path(home)
    path = home / TABLE
    with Artifact(home, "evaluation", "table").lock():
        for leftover in home.glob(f".{TABLE}.*.tmp"):  # an export killed before its rename: only the holder writes one
            leftover.unlink(missing_ok=True)
        rows = evaluation_rows(home)
        have = {r[KEY] for r in rows}
        history = {}
        if path.exists():
            try:  # one row per removed evaluation (the last one, should an older export have written two)
                history = {r.get(KEY): r for r in pq.read_table(path).to_pylist() if r.get(KEY) not in have}
            except (OSError, pa.ArrowException):  # unreadable: keep it for inspection, rebuild from the artifacts
                os.replace(path, path.with_name(f"{TABLE}.unreadable-{os.getpid()}"))
        table = _table(list(history.values()) + rows)
        if table is None:
            return path
        tmp = path.with_name(f".{TABLE}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def read_table(home: Path) -> pa.Table | None:
    """Every row: the exported table brought up to date with the artifacts first."""
    path = export_table(home)
    return pq.read_table(path) if path.exists() else None
