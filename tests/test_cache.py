import os

import pytest

from pipeline.cache import MARKER, Artifact, stable_hash


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
