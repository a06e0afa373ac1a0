"""Fingerprinted, atomically completed, verifiable artifact directories.

An artifact lives at ``<home>/<stage>/<fingerprint>/``. It is built in a sibling temporary directory, the
completion marker (which holds the stage's metadata and the size and SHA-256 of every file) is written last,
and the directory is renamed into place: a reader that sees the final directory sees a finished artifact, and
a killed build leaves only a ``.tmp-*`` directory that nothing trusts and the next build removes.

A marker proves only that a build finished. What happened to the files since (a deleted chunk, a truncated
file, a flipped byte, a file added beside the others) is caught by comparing them with the marker's record.
A reader (`require`) hashes every file on its first use in a process, and again only if the file changed since
(its size, mtime, ctime or inode moved: an edit moves the ctime, which nobody can set back); a cache hit that
reads nothing (`reusable`) compares sizes, hashes the small files and looks for files the marker does not list.
Readers list files from the marker (`listed_files`), never by globbing the directory. A damaged artifact is never
read: it is moved aside (``<fingerprint>.damaged-*``, kept for inspection) and rebuilt; a downstream stage
asking for it gets an error naming the asset.

A build records in its marker the content digest of every artifact it read (``inputs``), and it is not
published if one of them changed or was set aside while it ran. A published artifact whose input has since
been rebuilt with other bytes counts as damaged: it was computed from bytes that are no longer there.
What a marker cannot guard against is someone who rewrites the marker too.

Builds of one fingerprint are serialized by a lock (``<home>/.locks/``): a second process materializing the
same artifact waits, then reads it as a cache hit, instead of building it twice in a shared work directory.
``python -m pipeline.gc`` asks the same lock (without waiting) before it removes anything of a fingerprint.
"""
from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import stat
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

MARKER = "_COMPLETE.json"
# A cache hit that reads nothing hashes the files up to this size (bases, statistics, small checkpoints) and
# compares the sizes of the others; a reader hashes every file it has not verified in this process yet.
HASH_ON_USE_BYTES = 16 * 2**20

# A file changed this recently may change again within the clock's tick (Linux stamps files with a coarse clock),
# which its stat key could not tell apart: its key is not trusted to stand for its bytes.
RACY_NS = 2 * 10**9
# The directory name of a published artifact: its fingerprint and nothing after it (not .tmp-*, .damaged-*, .work).
FINGERPRINT_PATTERN = r"[0-9a-f]{8,64}"
# path -> ((size, mtime_ns, ctime_ns, inode, device), trusted) when its SHA-256 last matched the marker in this
# process; `trusted`: it had not changed for a while then, so an unchanged key means unchanged bytes.
_verified: dict[str, tuple[tuple[int, int, int, int, int], bool]] = {}
# What the build running in this context has read (require): "<stage>/<fingerprint>" -> (Artifact, its content
# digest when it was verified).
_reads: ContextVar[dict | None] = ContextVar("nested_build_reads", default=None)


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
        if p.is_file() and p != root / MARKER:
            out[p.relative_to(root).as_posix()] = [p.stat().st_size, file_sha256(p)]
    return out


def listed_files(directory: Path, pattern: str) -> list[Path]:
    """The files of an artifact directory whose relative paths match `pattern` (fnmatch), sorted, from its marker's
    record: what a reader reads, so a file planted beside them is never read. A directory without a marker (a
    build reading its own output) or with an old marker that records no files is listed from the disk."""
    directory = Path(directory)
    marker = directory / MARKER
    recorded = json.loads(marker.read_text()).get("files") if marker.is_file() else None
    if recorded is None:
        return sorted(p for p in directory.glob(pattern) if p.is_file())
    listed = [rel for rel in sorted(recorded) if fnmatch.fnmatchcase(rel, pattern)]
    if missing := [rel for rel in listed if not (directory / rel).is_file()]:  # never fewer samples than recorded
        raise FileNotFoundError(f"{directory}: {', '.join(missing[:3])} listed in its marker but missing")
    return [directory / rel for rel in listed]


def content_digest(meta: dict) -> str | None:
    """What an artifact's files are, from its marker: the hash of its record (None for a marker without one)."""
    files = meta.get("files")
    return stable_hash(files) if isinstance(files, dict) else None


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What stands for a file's bytes while it is unchanged. The change time too: an edit that keeps the size and
    puts the mtime back (touch -d, rsync -t, a restore) still moves the ctime, which no user can set."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def changed_lately(st: os.stat_result) -> bool:
    """Whether the file changed within RACY_NS of now, so that its stat key may not yet stand for its bytes."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_NS


def _hash_matches(path: Path, st: os.stat_result, digest: str) -> bool:
    """Whether the file's SHA-256 is `digest`; a file verified in this process and unchanged since is not read."""
    key = stat_key(st)
    if _verified.get(str(path)) == (key, True):
        return True
    if file_sha256(path) != digest:
        _verified.pop(str(path), None)
        return False
    if stat_key(os.stat(path)) == key:  # unchanged while it was read
        # Trusted to its stat key only if it did not change lately (the source-hash cache has the same rule). Either
        # way the key is kept, so that a build can tell whether its input was modified after it was verified.
        _verified[str(path)] = (key, not changed_lately(st))
    return True


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
    # The asset that builds it (e.g. level_2_latents for a latents artifact), for messages; not part of its identity.
    asset: str | None = field(default=None, compare=False)

    @property
    def path(self) -> Path:
        return self.home / self.stage / self.fingerprint

    @property
    def name(self) -> str:
        """The asset to materialize for it: its own name when known, else its stage kind."""
        return self.asset or self.stage

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
        """What no longer matches the marker's record (empty: intact): missing, resized, changed or unlisted files,
        and inputs rebuilt with other bytes since. `full` hashes every file (once per process while unchanged)."""
        full = verify_mode() == "full" if full is None else full
        try:
            meta = self.metadata()
        except (OSError, ValueError) as e:
            return [f"{MARKER} is unreadable ({type(e).__name__}: {e})"]
        recorded = meta.get("files")
        if recorded is None:
            return []  # built before markers recorded their files: only the marker vouches for it
        problems = []
        for rel, (size, digest) in recorded.items():
            p = self.path / rel
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                problems.append(f"{rel} is missing")
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{rel} is no longer a regular file")
            elif st.st_size != size:
                problems.append(f"{rel} is {st.st_size} bytes, {size} when built")
            elif (full or size <= HASH_ON_USE_BYTES) and not _hash_matches(p, st, digest):
                problems.append(f"{rel} has changed since it was built (SHA-256 differs)")
        problems += [f"{rel} is not one of the files its marker lists" for rel in self._unlisted(recorded)]
        problems += self._stale_inputs(meta)
        return problems

    def _unlisted(self, recorded: dict) -> list[str]:
        """Files (and links) under the artifact that its marker does not list: a copy or a plant is damage too."""
        out = []
        for dirpath, dirs, files in os.walk(self.path):  # does not follow links: a linked folder is listed, not entered
            rel_dir = Path(dirpath).relative_to(self.path)
            for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
                rel = (rel_dir / name).as_posix()
                if rel != MARKER and rel not in recorded:
                    out.append(rel)
        return sorted(out)

    def _stale_inputs(self, meta: dict) -> list[str]:
        out = []
        for name, digest in (meta.get("inputs") or {}).items():
            stage, _, fp = name.partition("/")
            upstream = Artifact(self.home, stage, fp)
            try:
                now = content_digest(upstream.metadata()) if upstream.is_complete() else None
            except (OSError, ValueError):
                continue  # its own marker is damaged: that artifact says so itself
            if now is not None and now != digest:
                out.append(f"it was built from {name}, which has been rebuilt with other files since")
        return out

    def require(self) -> Path:
        """The directory of a finished artifact whose every file matches its marker, or a clear error saying which
        asset to materialize. A damaged one is set aside, so that materializing its asset rebuilds it. A build in
        progress in this context records what it read (its marker's ``inputs``)."""
        if not self.is_complete():
            raise FileNotFoundError(
                f"upstream artifact {self.stage}/{self.fingerprint} is missing; materialize the '{self.name}' asset first")
        if problems := self.damage(full=True):
            aside = self.set_aside()
            where = f"set aside as {aside.name}; " if aside else ""
            raise ArtifactDamaged(
                f"upstream artifact {self.stage}/{self.fingerprint} is damaged ({'; '.join(problems[:5])}); {where}"
                f"rematerialize the '{self.name}' asset: it rebuilds it")
        if (reads := _reads.get()) is not None:
            reads.setdefault(f"{self.stage}/{self.fingerprint}", (self, content_digest(self.metadata())))
        return self.path

    def set_aside(self) -> Path | None:
        """Move this artifact to ``<fingerprint>.damaged-<time>`` (kept for inspection) unless a build of it holds
        its lock; the new path, or None if it stayed."""
        with self.try_lock("setting aside a damaged copy") as taken:
            if not taken or not self.path.is_dir():
                return None
            return self._move_aside()

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.fingerprint}.damaged-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}")
        self.path.rename(aside)
        return aside

    def reusable(self, log: Callable[[str], None] = print) -> bool:
        """True for a complete, intact artifact (a cache hit). A damaged one is moved aside, so it is rebuilt."""
        if not self.is_complete():
            return False
        if problems := self.damage():  # under the build lock: moved aside here, not through set_aside's try_lock
            aside = self._move_aside()
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
        # Holding the lock, no other build of this fingerprint can be running: every temporary build is a
        # leftover, whatever its pid says (a killed builder on another host, or one not yet reaped).
        holding = self.lock_path in _held
        for stale in parent.glob(f"{self.fingerprint}.tmp-*"):
            if holding or build_abandoned(stale):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f"{self.fingerprint}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        meta: dict = {}
        reads: dict[str, tuple[Artifact, str | None]] = {}
        token = _reads.set(reads)
        try:
            try:
                start = time.perf_counter()
                yield tmp, meta
            finally:
                _reads.reset(token)
            meta.setdefault("seconds", round(time.perf_counter() - start, 3))
            meta.update(stage=self.stage, fingerprint=self.fingerprint, files=file_record(tmp),
                        inputs=_still_as_read(self, reads))
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


def _still_as_read(built: Artifact, reads: dict[str, tuple[Artifact, str | None]]) -> dict[str, str | None]:
    """The content digest of each artifact a build read, after checking that none was changed, rebuilt or set aside
    while it ran: a result computed from bytes that were since replaced is refused, not published."""
    out = {}
    for name, (art, digest) in sorted(reads.items()):
        changed = []
        try:
            meta = art.metadata()
        except (OSError, ValueError):
            meta = None
        if meta is None:
            changed.append("it was set aside or removed")
        elif content_digest(meta) != digest:
            changed.append("it was rebuilt with other files")
        else:
            for rel in meta.get("files") or {}:
                p = art.path / rel
                if (seen := _verified.get(str(p))) is None:
                    continue  # not read through this process's verification (e.g. by another rank)
                key = seen[0]
                try:
                    now = stat_key(os.stat(p))
                except FileNotFoundError:
                    now = None
                if now != key:
                    changed.append(f"{rel} was modified")
        if changed:
            raise ArtifactDamaged(f"{built.stage}/{built.fingerprint} was not published: its input {name} changed "
                                  f"while it was being built ({'; '.join(changed[:3])}); rematerialize '{art.name}' "
                                  f"and then '{built.name}'")
        out[name] = digest
    return out


def build_abandoned(tmp: Path, mine_abandoned: bool = True) -> bool:
    """Whether the process that made a ``<fingerprint>.tmp-<pid>-*`` build directory is gone, or is this one and
    `mine_abandoned` (a builder's own leftover of an earlier failed attempt). A pid another user owns is alive."""
    try:
        pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
        os.kill(pid, 0)
        if _is_zombie(pid):  # killed, not yet reaped by its parent: it builds nothing any more
            return True
        return mine_abandoned and pid == os.getpid()  # our own leftovers from an earlier failed attempt
    except (ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False


def _is_zombie(pid: int) -> bool:
    try:  # /proc/<pid>/stat: "pid (comm) state ...", comm may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
