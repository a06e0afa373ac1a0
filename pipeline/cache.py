"""Fingerprinted, atomically completed artifact directories (SPEC section 4).

An artifact lives at ``<home>/<stage>/<fingerprint>/``. It is built in a sibling temporary directory, the
completion marker (which also holds the stage's metadata) is written last, and the directory is renamed into
place: a reader that sees the final directory sees a finished artifact, and a killed build leaves only a
``.tmp-*`` directory that nothing trusts and the next build removes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

MARKER = "_COMPLETE.json"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object that does not depend on key order or on how paths are spelled."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Artifact:
    home: Path
    stage: str
    fingerprint: str

    @property
    def path(self) -> Path:
        return self.home / self.stage / self.fingerprint

    def is_complete(self) -> bool:
        return (self.path / MARKER).is_file()

    def metadata(self) -> dict:
        if not self.is_complete():
            raise FileNotFoundError(f"artifact {self.stage}/{self.fingerprint} is not materialized ({self.path})")
        return json.loads((self.path / MARKER).read_text())

    def require(self) -> Path:
        """The directory of a finished artifact, or a clear error saying which upstream asset to materialize."""
        if not self.is_complete():
            raise FileNotFoundError(
                f"upstream artifact {self.stage}/{self.fingerprint} is missing; materialize the '{self.stage}' asset first")
        return self.path

    @contextmanager
    def build(self) -> Iterator[tuple[Path, dict]]:
        """Yield (tmp_dir, metadata dict to fill); on success the marker is written and the directory published."""
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f"{self.fingerprint}.tmp-*"):
            if _owner_dead(stale):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f"{self.fingerprint}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        meta: dict = {}
        try:
            start = time.perf_counter()
            yield tmp, meta
            meta.setdefault("seconds", round(time.perf_counter() - start, 3))
            meta.update(stage=self.stage, fingerprint=self.fingerprint)
            marker = tmp / MARKER
            marker.with_suffix(".part").write_text(json.dumps(meta, indent=1, default=str))
            marker.with_suffix(".part").rename(marker)
            if self.path.exists():  # an incomplete leftover (no marker) or a concurrent twin that finished first
                if self.is_complete():
                    shutil.rmtree(tmp)
                    return
                shutil.rmtree(self.path)
            tmp.rename(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _owner_dead(tmp: Path) -> bool:
    try:
        pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        os.kill(pid, 0)
        return pid == os.getpid()  # our own leftovers from an earlier failed attempt
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False
