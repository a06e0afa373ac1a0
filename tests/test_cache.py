import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from pipeline.cache import MARKER, Artifact, ArtifactDamaged, stable_hash


def test_stable_hash_ignores_key_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_build_publishes_atomically_with_marker_last(tmp_path):
    art = Artifact(tmp_path, "stage", "abc")
    assert not art.is_complete()
    with art.build() as (tmp, meta):
        (tmp / "data.txt").write_text("x")
        meta["n"] = 3
        assert not art.path.exists()  # nothing visible until the build finishes
    assert art.is_complete()
    assert (art.path / "data.txt").read_text() == "x"
    assert art.metadata()["n"] == 3 and art.metadata()["fingerprint"] == "abc"
    assert list(art.path.parent.iterdir()) == [art.path]


def test_failed_build_leaves_nothing_to_trust(tmp_path):
    art = Artifact(tmp_path, "stage", "abc")
    with pytest.raises(RuntimeError):
        with art.build() as (tmp, meta):
            (tmp / "half.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("interrupted")
    assert not art.is_complete() and not art.path.exists()
    assert list(art.path.parent.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="materialize the 'stage' asset first"):
        art.require()


def test_leftover_of_a_killed_build_is_ignored_then_removed(tmp_path):
    art = Artifact(tmp_path, "stage", "abc")
    dead = art.path.parent / "abc.tmp-999999999-dead00"  # a pid that does not exist
    dead.mkdir(parents=True)
    (dead / MARKER).write_text("{}")  # even with a marker inside, a tmp dir is never read
    assert not art.is_complete()
    with art.build() as (tmp, meta):
        pass
    assert art.is_complete() and not dead.exists()


def test_incomplete_final_directory_is_rebuilt(tmp_path):
    art = Artifact(tmp_path, "stage", "abc")
    art.path.mkdir(parents=True)
    (art.path / "partial").write_text("?")
    assert not art.is_complete()
    with art.build() as (tmp, meta):
        (tmp / "good").write_text("!")
    assert art.is_complete() and not (art.path / "partial").exists()


def _built(tmp_path, files: dict[str, bytes]) -> Artifact:
    art = Artifact(tmp_path, "stage", "abc")
    with art.build() as (tmp, meta):
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
    return art


def test_marker_records_every_file_and_damage_is_found(tmp_path):
    art = _built(tmp_path, {"a.bin": b"x" * 100, "sub/b.bin": b"y" * 10})
    files = art.metadata()["files"]
    assert set(files) == {"a.bin", "sub/b.bin"} and files["a.bin"][0] == 100
    assert art.damage() == [] and art.require() == art.path

    (art.path / "a.bin").write_bytes(b"x" * 50)  # truncated
    (art.path / "sub" / "b.bin").unlink()  # deleted
    problems = art.damage()
    assert problems == ["a.bin is 50 bytes, 100 when built", "sub/b.bin is missing"]
    with pytest.raises(ArtifactDamaged, match="a.bin is 50 bytes.*rematerialize the 'stage' asset"):
        art.require()


def test_same_size_change_is_found_by_hash(tmp_path, monkeypatch):
    import pipeline.cache as cache

    art = _built(tmp_path, {"a.bin": b"x" * 100})
    (art.path / "a.bin").write_bytes(b"z" * 100)
    assert art.damage() == ["a.bin has changed since it was built (SHA-256 differs)"]
    monkeypatch.setattr(cache, "HASH_ON_USE_BYTES", 10)  # a large file: only sizes on use, hashes when asked
    assert art.damage() == []
    assert art.damage(full=True) != []
    monkeypatch.setenv("NESTED_VERIFY", "full")
    assert art.damage() != []


def test_damaged_artifact_is_set_aside_and_rebuilt(tmp_path):
    art = _built(tmp_path, {"a.bin": b"x" * 100})
    (art.path / "a.bin").write_bytes(b"")
    calls = []
    meta, hit = art.materialize(lambda out: (out / "a.bin").write_bytes(b"new") and calls.append(1) or {"v": 2},
                                log=lambda m: None)
    assert not hit and calls == [1] and meta["v"] == 2 and (art.path / "a.bin").read_bytes() == b"new"
    aside = list(art.path.parent.glob("abc.damaged-*"))
    assert len(aside) == 1 and (aside[0] / "a.bin").read_bytes() == b""  # nothing is deleted
    assert art.materialize(lambda out: pytest.fail("rebuilt an intact artifact"), log=lambda m: None)[1]


def _slow_build(home: str, started: str, result: str) -> None:
    """One process materializing the artifact; records 'miss' or 'hit'."""
    art = Artifact(Path(home), "stage", "abc")

    def build(out):
        Path(started).touch()
        time.sleep(1.5)  # long enough for the other process to arrive while this one builds
        (out / "data.bin").write_bytes(str(os.getpid()).encode())
        return {"builder": os.getpid()}

    _, hit = art.materialize(build, log=lambda m: None)
    Path(result).write_text("hit" if hit else "miss")


def test_concurrent_materializations_build_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = tmp_path / "started"
    first = ctx.Process(target=_slow_build, args=(str(tmp_path), str(started), str(tmp_path / "r1")))
    first.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    second = ctx.Process(target=_slow_build, args=(str(tmp_path), str(tmp_path / "started2"), str(tmp_path / "r2")))
    second.start()  # arrives while the first holds the lock
    first.join(60), second.join(60)
    assert (first.exitcode, second.exitcode) == (0, 0)
    assert ((tmp_path / "r1").read_text(), (tmp_path / "r2").read_text()) == ("miss", "hit")
    assert not (tmp_path / "started2").exists()  # the second never built
    art = Artifact(tmp_path, "stage", "abc")
    assert (art.path / "data.bin").read_text() == str(art.metadata()["builder"])
    assert sorted(p.name for p in art.path.parent.iterdir()) == ["abc"]


def _hold_lock_forever(home: str, ready: str) -> None:
    with Artifact(Path(home), "stage", "abc").lock():
        Path(ready).touch()
        time.sleep(600)


def test_a_killed_holder_does_not_block_the_next_build(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = tmp_path / "ready"
    holder = ctx.Process(target=_hold_lock_forever, args=(str(tmp_path), str(ready)))
    holder.start()
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    art = Artifact(tmp_path, "stage", "abc")
    assert str(holder.pid) in art.lock_path.read_text()  # who holds it, for the waiting message
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    messages = []
    began = time.time()
    meta, hit = art.materialize(lambda out: {"n": 1}, log=messages.append)
    assert not hit and meta["n"] == 1 and time.time() - began < 5
    assert any("took over the lock" in m and str(holder.pid) in m for m in messages)


# ---- every byte a reader uses is verified; results of changed inputs are not kept (issue 32)

def test_a_reader_hashes_every_file_once_per_process_and_sets_damage_aside(tmp_path, monkeypatch):
    import pipeline.cache as cache

    monkeypatch.setattr(cache, "HASH_ON_USE_BYTES", 10)  # a.bin counts as large: a cache hit only compares its size
    monkeypatch.setattr(cache, "RACY_NS", 0)  # written a moment ago: trusted to its stat key only after a while
    art = _built(tmp_path, {"a.bin": bytes(range(100))})
    hashed = []
    real = cache.file_sha256
    monkeypatch.setattr(cache, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert art.require() == art.path and art.require() == art.path
    assert hashed == ["a.bin"]  # verified on first use, not again while unchanged
    monkeypatch.setattr(cache, "RACY_NS", 10**12)
    cache._verified.clear()
    art.require(), art.require()
    assert hashed == ["a.bin"] * 3  # changed within the racy window: hashed on every use

    st = (art.path / "a.bin").stat()
    with open(art.path / "a.bin", "r+b") as f:  # one flipped bit, same size, the mtime put back
        f.seek(40)
        f.write(bytes([40 ^ 1]))
    os.utime(art.path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert art.damage() == []  # a cache hit that reads nothing does not hash a large file...
    with pytest.raises(ArtifactDamaged, match=r"a\.bin has changed.*set aside as abc\.damaged-.*rematerialize the "
                                              r"'stage' asset"):
        art.require()  # ...but a reader does, and its ctime moved with the edit
    assert not art.path.exists()
    (aside,) = tmp_path.joinpath("stage").glob("abc.damaged-*")
    assert (aside / "a.bin").read_bytes()[40] == 41  # kept for inspection
    assert not art.materialize(lambda out: (out / "a.bin").write_bytes(bytes(range(100))) and {}, log=lambda m: None)[1]


def test_a_file_not_in_the_marker_is_damage_and_never_listed(tmp_path):
    from pipeline.cache import listed_files

    art = _built(tmp_path, {"train-000000.tar": b"t" * 10, "holdout-000000.tar": b"h" * 10})
    assert [p.name for p in listed_files(art.path, "train-*.tar")] == ["train-000000.tar"]
    shutil.copy(art.path / "train-000000.tar", art.path / "train-000099.tar")  # a copy beside the real one
    (art.path / "sub").mkdir()
    (art.path / "sub" / "x.npy").write_bytes(b"planted")
    (art.path / "link").symlink_to(tmp_path, target_is_directory=True)
    assert art.damage() == ["link is not one of the files its marker lists",
                            "sub/x.npy is not one of the files its marker lists",
                            "train-000099.tar is not one of the files its marker lists"]
    assert [p.name for p in listed_files(art.path, "train-*.tar")] == ["train-000000.tar"]  # the marker's list
    assert not art.reusable(log=lambda m: None)  # a cache hit on it sets it aside and rebuilds


def _read_and_build(home: Path, upstream: Artifact, name: str, during=lambda: None) -> Artifact:
    out = Artifact(home, "down", name)
    with out.build() as (tmp, meta):
        (tmp / "sum.txt").write_text(str(sum((upstream.require() / "a.bin").read_bytes())))
        during()
    return out


def test_a_build_records_what_it_read_and_is_not_published_if_that_changed_meanwhile(tmp_path):
    up = _built(tmp_path, {"a.bin": b"x" * 100})
    down = _read_and_build(tmp_path, up, "ok")
    assert down.metadata()["inputs"] == {"stage/abc": stable_hash(up.metadata()["files"])}

    def edit():  # another process rewrites the input while this build uses it
        (up.path / "a.bin").write_bytes(b"y" * 100)

    with pytest.raises(ArtifactDamaged, match=r"down/bad was not published: its input stage/abc changed while it was "
                                              r"being built \(a\.bin was modified\)"):
        _read_and_build(tmp_path, up, "bad", during=edit)
    assert not Artifact(tmp_path, "down", "bad").path.exists()


def test_a_result_whose_input_was_rebuilt_with_other_bytes_is_not_a_cache_hit(tmp_path):
    up = _built(tmp_path, {"a.bin": b"x" * 100})
    down = _read_and_build(tmp_path, up, "d")
    assert down.damage() == []
    shutil.rmtree(up.path)  # removed (gc) and rebuilt identically: still the bytes it was computed from
    _built(tmp_path, {"a.bin": b"x" * 100})
    assert down.damage() == []
    shutil.rmtree(up.path)  # rebuilt with other bytes: the result describes bytes that are gone
    _built(tmp_path, {"a.bin": b"z" * 100})
    assert down.damage() == ["it was built from stage/abc, which has been rebuilt with other files since"]
    assert not down.reusable(log=lambda m: None)


def test_the_holder_of_a_taken_over_lock_removes_every_leftover_build(tmp_path):
    art = Artifact(tmp_path, "stage", "abc")
    # pid 1 is alive: a builder killed on another host, or whose pid was reused, names a live process here
    other = art.path.parent / "abc.tmp-1-aaaaaa"
    other.mkdir(parents=True)
    with art.build() as (tmp, meta):  # without the lock a live pid's build may be running: left alone
        pass
    assert other.exists()
    shutil.rmtree(art.path)
    with art.lock(log=lambda m: None), art.build() as (tmp, meta):
        pass
    assert art.is_complete() and not other.exists()


def test_a_killed_builder_not_yet_reaped_is_abandoned(tmp_path):
    from pipeline.cache import build_abandoned

    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    tmp = tmp_path / f"abc.tmp-{child.pid}-aaaaaa"
    tmp.mkdir()
    assert not build_abandoned(tmp)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while not build_abandoned(tmp) and time.time() < deadline:  # a zombie until joined
        time.sleep(0.05)
    assert build_abandoned(tmp)
    child.join()


def test_a_missing_upstream_names_the_asset_to_materialize(tiny_cfg, tmp_path):
    from pipeline.plan import build_plan

    plan = build_plan(tiny_cfg, tmp_path)
    for name in ("encoder_features", "level_2_latents", "level_1_model", "reference_stats"):
        with pytest.raises(FileNotFoundError, match=f"materialize the '{name}' asset first"):
            plan[name].artifact.require()
