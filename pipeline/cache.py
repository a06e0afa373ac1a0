"""Fingerprinted, atomically completed, verifiable artifact directories.

An artifact lives at ``<home>/<stage>/<fingerprint>/``. It is built in a sibling temporary directory, the
completion marker (which holds the stage's metadata and the size and SHA-256 of every file) is written last,
and the directory is renamed into place: a reader that sees the final directory sees a finished artifact, and
a killed build leaves only a ``.tmp-*`` directory that nothing trusts and the next build removes.

A marker proves only that a build finished. What happened to the files since (a deleted chunk, a truncated
file, a flipped byte) is caught by comparing them with the marker's record: sizes on every use, hashes of the
small files on every use and of all files on request (``NESTED_VERIFY=full`` or ``python -m pipeline.plan
--verify``). A damaged artifact is never read: a cache hit on it moves it aside (``<fingerprint>.damaged-*``,
kept for inspection) and rebuilds it; a downstream stage asking for it gets an error naming the asset.

Builds of one fingerprint are serialized by a lock (``<home>/.locks/``): a second process materializing the
same artifact waits, then reads it as a cache hit, instead of building it twice in a shared work directory.
``python -m pipeline.gc`` asks the same lock (without waiting) before it removes anything of a fingerprint.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

MARKER = "_COMPLETE.json"
# Files up to this size are hashed on every use of the artifact (the bases, statistics, reference features,
# checkpoints of the small models); larger ones only when verifying in full. Sizes are always compared.
HASH_ON_USE_BYTES = 16 * 2**20


class ArtifactDamaged(RuntimeError):
    """A complete artifact whose files no longer match what its marker recorded."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object that does not depend on key order or on how paths are spelled."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(root: Path) -> dict[str, list]:
    """{relative path: [size, sha256]} of every file under `root` except the marker."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MARKER:
            out[p.relative_to(root).as_posix()] = [p.stat().st_size, file_sha256(p)]
    return out


def tree_bytes(path: Path) -> int:
    """Total size of the files under `path` (symbolic links are not followed; 0 for a missing path)."""
    if not path.is_dir():
        return path.lstat().st_size if path.is_file() else 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked
                pass
    return total


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def verify_mode() -> str:
    """How thoroughly a cache hit is checked: 'full' hashes every file; the default hashes the small ones."""
    return "full" if os.environ.get("NESTED_VERIFY", "").lower() in ("1", "full", "true", "yes") else "default"


_held: dict[Path, tuple[int, int]] = {}  # lock path -> (fd, depth): a process may re-enter its own lock


@dataclass(frozen=True)
class Artifact:
    home: Path
    stage: str
    fingerprint: str

    @property
    def path(self) -> Path:
        return self.home / self.stage / self.fingerprint

    @property
    def lock_path(self) -> Path:
        # Outside the stage directory, so that directory holds only artifacts and their temporary builds.
        return self.home / ".locks" / f"{self.stage}-{self.fingerprint}.lock"

    def is_complete(self) -> bool:
        return (self.path / MARKER).is_file()

    def metadata(self) -> dict:
        if not self.is_complete():
            raise FileNotFoundError(f"artifact {self.stage}/{self.fingerprint} is not materialized ({self.path})")
        return json.loads((self.path / MARKER).read_text())

    def bytes_on_disk(self, meta: dict | None = None) -> int:
        """The artifact's size: its marker's record of every file's size, plus the marker (a walk for an artifact
        whose marker predates the record). `meta`: the marker's contents, when the caller has read them already."""
        meta = self.metadata() if meta is None else meta
        if not isinstance(meta.get("files"), dict):
            return tree_bytes(self.path)
        marker = self.path / MARKER
        return sum(int(size) for size, _ in meta["files"].values()) + (marker.stat().st_size if marker.is_file() else 0)

    def damage(self, full: bool | None = None) -> list[str]:
        """What no longer matches the marker's record (empty: intact). `full` hashes every file."""
        full = verify_mode() == "full" if full is None else full
        try:
            recorded = self.metadata().get("files")
        except (OSError, ValueError) as e:
            return [f"{MARKER} is unreadable ({type(e).__name__}: {e})"]
        if recorded is None:
            return []  # built before markers recorded their files: only the marker vouches for it
        problems = []
        for rel, (size, digest) in recorded.items():
            p = self.path / rel
            if not p.is_file():
                problems.append(f"{rel} is missing")
            elif (actual := p.stat().st_size) != size:
                problems.append(f"{rel} is {actual} bytes, {size} when built")
            elif (full or size <= HASH_ON_USE_BYTES) and file_sha256(p) != digest:
                problems.append(f"{rel} has changed since it was built (SHA-256 differs)")
        return problems

    def require(self) -> Path:
        """The directory of a finished, intact artifact, or a clear error saying which asset to materialize."""
        if not self.is_complete():
            raise FileNotFoundError(
                f"upstream artifact {self.stage}/{self.fingerprint} is missing; materialize the '{self.stage}' asset first")
        if problems := self.damage():
            raise ArtifactDamaged(
                f"upstream artifact {self.stage}/{self.fingerprint} is damaged ({'; '.join(problems[:5])}); "
                f"rematerialize the '{self.stage}' asset: it sets the damaged copy aside and rebuilds it")
        return self.path

    def reusable(self, log: Callable[[str], None] = print) -> bool:
        """True for a complete, intact artifact (a cache hit). A damaged one is moved aside, so it is rebuilt."""
        if not self.is_complete():
            return False
        if problems := self.damage():
            aside = self.path.with_name(f"{self.fingerprint}.damaged-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
            self.path.rename(aside)
            log(f"warning: {self.stage}/{self.fingerprint} is damaged ({'; '.join(problems[:5])}); "
                f"moved to {aside} and rebuilding")
            return False
        return True

    @contextmanager
    def lock(self, log: Callable[[str], None] = print) -> Iterator[None]:
        """Hold this fingerprint's build lock; wait while another process holds it.

        An flock: the kernel releases it when its holder exits, however it exits, so a crashed build never
        leaves a lock behind (the holder's pid and host, written into the file, are only for the message).
        """
        path = self.lock_path
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
            try:
                yield
            finally:
                _held[path] = (fd, _held[path][1] - 1)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if previous := os.pread(fd, 4096, 0).decode(errors="replace").strip():
                    log(f"{self.stage}/{self.fingerprint}: took over the lock of {previous}, which ended without "
                        "releasing it (its unfinished build, if any, is discarded)")
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                log(f"waiting for {self.stage}/{self.fingerprint}: being built by {holder}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
            _held[path] = (fd, 1)
            try:
                yield
            finally:
                del _held[path]
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def lock_held(self) -> bool:
        """Whether a build (in this process or another) holds this fingerprint's lock now. Creates no lock file."""
        if self.lock_path in _held:
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # nobody ever locked it (or it was never built on this home)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def lock_holder(self) -> str:
        """Who holds (or last held) the lock, as the holder wrote it: pid, host, since; '' if unknown."""
        try:
            return self.lock_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    @contextmanager
    def try_lock(self, what: str = "removing") -> Iterator[bool]:
        """Take the lock only if nobody holds it, without waiting; yields whether it was taken (held until the
        block ends). A build that starts meanwhile waits for it, as for any other holder."""
        if self.lock_path in _held:
            yield False
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
            except BlockingIOError:
                taken = False
            if not taken:
                yield False
                return
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "doing": what,
                                      "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
            try:
                yield True
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @contextmanager
    def build(self) -> Iterator[tuple[Path, dict]]:
        """Yield (tmp_dir, metadata dict to fill); on success the marker is written and the directory published.

        It takes no lock itself (under torchrun the launching process holds it for the ranks): callers that
        may race use `materialize`, or hold `lock()` around it.
        """
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f"{self.fingerprint}.tmp-*"):
            if build_abandoned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f"{self.fingerprint}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        meta: dict = {}
        try:
            start = time.perf_counter()
            yield tmp, meta
            meta.setdefault("seconds", round(time.perf_counter() - start, 3))
            meta.update(stage=self.stage, fingerprint=self.fingerprint, files=file_record(tmp))
            marker = tmp / MARKER
            marker.with_suffix(".part").write_text(json.dumps(meta, indent=1, default=str))
            marker.with_suffix(".part").rename(marker)
            if self.path.exists():  # an incomplete leftover (no marker) or a twin built without the lock
                if self.is_complete():
                    shutil.rmtree(tmp)
                    return
                shutil.rmtree(self.path)
            tmp.rename(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def materialize(self, build: Callable[[Path], dict], log: Callable[[str], None] = print) -> tuple[dict, bool]:
        """Build with `build(tmp_dir) -> metadata` unless an intact artifact exists; returns (metadata, cache_hit)."""
        with self.lock(log):
            if self.reusable(log):
                log(f"cache hit: {self.path}")
                return self.metadata(), True
            log(f"building {self.path}")
            with self.build() as (tmp, meta):
                meta.update(build(tmp))
            return self.metadata(), False


def build_abandoned(tmp: Path, mine_abandoned: bool = True) -> bool:
    """Whether the process that made a ``<fingerprint>.tmp-<pid>-*`` build directory is gone, or is this one and
    `mine_abandoned` (a builder's own leftover of an earlier failed attempt). A pid another user owns is alive."""
    try:
        pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        os.kill(pid, 0)
        return mine_abandoned and pid == os.getpid()  # our own leftovers from an earlier failed attempt
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False
