"""The content hashes of a data source's files, kept between processes without a record per file in memory.

Every process that builds the plan (each Dagster step, each torchrun rank, and the DataLoader workers they fork)
fingerprints the source, and for a folder that means a SHA-256 per file. Hashing 1.28M files again in every process
is out of the question, and so is holding a record per file: a dict of them cost ~1.5 kB per file, ~1.9 GB per
process at ImageNet's size, inherited by every worker. So the hashes are kept in a Parquet table per source root,
sorted by relative path, and read as a stream beside the files being listed in the same order (a merge join):
memory stays one batch of rows whatever the number of files. The table is only a cache: a missing, corrupt or
stale one is rebuilt, and it is replaced by rename, so readers on a shared (NFS) home never see half of one.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .cache import changed_lately, file_sha256, stat_key

STORE_DIR = ".source-hashes"   # under the artifact home: one table per source root
OLD_STORE = ".source-hashes.json"  # the former whole-dict store, removed on sight (it could be hundreds of MB)
BATCH = 8192                  # rows read or written at a time
STALE_S = 86_400               # a temporary table this old was left by a killed process
SCHEMA = pa.schema([
    ("rel", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("ctime_ns", pa.int64()),
    ("ino", pa.uint64()), ("dev", pa.uint64()), ("sha256", pa.string()),
])

# Without an artifact home, single-file sources (a tgz, an npz) are kept in-process: one entry per file, and the
# benchmarks fingerprint many variants of one config that way.
_single_files: dict[str, tuple[tuple, str]] = {}


def _rows(path: Path) -> Iterator[tuple]:
    """The kept rows of a table, in order, one batch in memory at a time; nothing if it is missing or unreadable."""
    try:
        table = pq.ParquetFile(path, pre_buffer=False)  # pre-buffered, a whole file's column chunks were held
        if table.schema_arrow != SCHEMA:
            return
        for batch in table.iter_batches(batch_size=BATCH, use_threads=False):
            yield from zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns)))
    except (OSError, pa.ArrowException):
        return  # missing, corrupt or cut short: what was read stands, the rest is hashed again


class _RootHashes:
    """sha256 of the files under one root, asked for in sorted order of their relative paths.

    Answers from the kept table while a file's stat key (cache.stat_key) is unchanged and it did not change lately
    (cache.changed_lately: its key may not yet stand for its bytes). The table is rewritten only when an answer
    differs from it (a file new, changed or gone), and then as a stream: the rows read so far are copied, the rest
    written as they come.
    """

    def __init__(self, root: Path, cache_dir: Path | None):
        self.given = str(root)
        self.root = os.path.realpath(root)
        self.path = None
        if cache_dir is not None:
            self.path = Path(cache_dir) / STORE_DIR / f"{hashlib.sha256(self.root.encode()).hexdigest()[:32]}.parquet"
            (Path(cache_dir) / OLD_STORE).unlink(missing_ok=True)
        self.kept = _rows(self.path) if self.path is not None else iter(())
        self.next_kept = next(self.kept, None)
        self.same = 0           # answers so far that were the kept table's first rows, in order
        self.last = None        # the last relative path written (the table stays sorted)
        self.writer = self.tmp = None
        self.out: list[tuple] = []

    def sha256(self, rel: str) -> str:
        full = os.path.join(self.root, rel) if rel else self.root
        st = os.stat(full)
        key = stat_key(st)
        racy = changed_lately(st)
        if self.path is None and not rel and not racy and _single_files.get(full, (None,))[0] == key:
            return _single_files[full][1]
        while self.next_kept is not None and self.next_kept[0] < rel:  # kept rows for files no longer there
            self._changed()
            self.next_kept = next(self.kept, None)
        row = self.next_kept
        listed = row is not None and row[0] == rel
        if listed:
            self.next_kept = next(self.kept, None)
            if not racy and tuple(row[1:6]) == key:
                self._keep(row)
                return row[6]
        digest = file_sha256(Path(full))
        kept = not racy and stat_key(os.stat(full)) == key  # unchanged while it was read
        if kept or listed:
            self._changed()
        if kept:
            self._keep((rel, *key, digest))
            if not rel:
                _single_files[full] = (key, digest)
        return digest

    def _keep(self, row: tuple) -> None:
        if self.writer is None:
            self.same += 1
            self.last = row[0]
        elif self.last is None or row[0] > self.last:  # asked out of order: answered, not kept
            self.out.append(row)
            self.last = row[0]
            if len(self.out) >= BATCH:
                self._flush()

    def _changed(self) -> None:
        """From here on the table differs from the kept one: start writing the new one, the same rows first."""
        if self.writer is not None or self.path is None:
            return
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, SCHEMA)
        except OSError:  # a read-only home only costs the hashing again next time
            self.path = None
            return
        copied = 0
        for row in _rows(self.path):
            if copied == self.same:
                break
            self.out.append(row)
            copied += 1
            if len(self.out) >= BATCH:
                self._flush()

    def _flush(self) -> None:
        if self.out:
            self.writer.write_table(pa.Table.from_pylist([dict(zip(SCHEMA.names, r)) for r in self.out], SCHEMA))
            self.out = []

    def close(self, publish: bool) -> None:
        if publish and self.next_kept is not None:  # rows kept for files after the last one asked for
            self._changed()
        if self.writer is None:
            return
        try:
            if publish:
                self._flush()
            self.writer.close()
            if publish:
                os.replace(self.tmp, self.path)
                for stale in self.path.parent.glob(f"{self.path.name}.tmp-*"):  # left by a killed process
                    if time.time() - stale.stat().st_mtime > STALE_S:
                        stale.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


class SourceHashes:
    """The `FileHash` a source's identity is given (pipeline/sources.py): `hashes(root, rel)` is the sha256 of
    `root/rel` (of `root` itself where `rel` is ""). Ask for each root's files in sorted order of `rel`: then the
    kept hashes are read as a stream; out of order, a file is hashed again. A context manager: on a clean exit
    the tables are updated, after an error they are left as they were.
    """

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir
        self.current: _RootHashes | None = None

    def __call__(self, root: Path, rel: str) -> str:
        if self.current is None or self.current.given != str(root):
            self._close(True)
            self.current = _RootHashes(root, self.cache_dir)
        return self.current.sha256(rel)

    def _close(self, publish: bool) -> None:
        if self.current is not None:
            self.current.close(publish)
            self.current = None

    def __enter__(self) -> SourceHashes:
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._close(exc_type is None)
