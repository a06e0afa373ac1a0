"""Fingerprints follow the content of the data and checkpoints, not where they lie, how the path is spelled or mtimes.

The same config in two checkout folders, reached through `..` or a symlinked folder, or after a `touch`, plans
the same artifacts (nothing is rebuilt); one changed byte of the data moves the images and everything downstream.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

import pipeline.cache as cache_mod
import pipeline.source_hashes as source_hashes
from models.weights import resolve_weights
from pipeline.config import parse_config
from pipeline.fingerprints import config_fingerprint
from pipeline.schema import DatasetConfig
from pipeline.ingest import source_fingerprint
from pipeline.source_hashes import OLD_STORE as HASH_CACHE_V1, STORE_DIR
from pipeline.sources import folder_identity
from pipeline.plan import build_plan

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
DAY_AGO = time.time_ns() - 86_400 * 10**9


def _age(path: Path) -> None:
    """Date every file under `path` a day back: data that has sat on disk a while (hash caches keep it)."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_file():
            os.utime(p, ns=(DAY_AGO, DAY_AGO))


def _touch(p: Path) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))


def _npz(path: Path, bump: bool = False) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    if bump:
        images[3, 2, 1, 0] ^= 1  # one byte of one image
    np.savez(path, images=images, labels=np.arange(20) % 2)


def _folder(root: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / ".DS_Store").write_bytes(b"finder")  # hidden: ingest never reads it


def _checkout(base: Path, weights: Path) -> Path:
    """One checkout folder: data/x.npz, data/imgs/, weights/lite0.pth and weights/inception.pt."""
    (base / "data").mkdir(parents=True)
    _npz(base / "data" / "x.npz")
    _folder(base / "data" / "imgs")
    (base / "weights").mkdir()
    shutil.copyfile(weights, base / "weights" / "lite0.pth")
    (base / "weights" / "inception.pt").write_bytes(b"stand-in inception file")
    _age(base)
    return base


def _config(data: Path, weights: Path):
    """tiny.yaml with its data, encoder checkpoint and Inception file at the given (possibly odd) spellings."""
    cfg = json.loads(json.dumps(TINY))
    source = "npz" if str(data).endswith(".npz") else "folder"
    cfg["dataset"] = {"source": source, "path": str(data), "resolution": 16, "source_size": 32,
                      "holdout_fraction": 0.1, "shard_size": 100}
    cfg["encoder"]["weights"] = str(weights / "lite0.pth")
    cfg["sampling"]["inception_weights"] = str(weights / "inception.pt")
    return parse_config(cfg, "test")


def _fingerprints(cfg, home: Path) -> dict[str, str]:
    return {name: st.fingerprint for name, st in build_plan(cfg, home).items()} | {"config": config_fingerprint(cfg)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp")
    packaged = resolve_weights(TINY["encoder"]["weights"])
    a = _checkout(tmp / "checkout_a", packaged)
    b = _checkout(tmp / "elsewhere" / "checkout_b", packaged)
    (tmp / "link").symlink_to(a / "data", target_is_directory=True)
    (tmp / "wlink").symlink_to(a / "weights", target_is_directory=True)
    return {"tmp": tmp, "a": a, "b": b}


@pytest.mark.parametrize("data", ["x.npz", "imgs"])
def test_same_content_anywhere_same_fingerprints(world, data):
    tmp, a, b = world["tmp"], world["a"], world["b"]
    spellings = {
        "checkout a": (a / "data" / data, a / "weights", tmp / "home_a"),
        "checkout b": (b / "data" / data, b / "weights", tmp / "home_b"),
        "dotdot": (a / "data" / ".." / "data" / data, a / "weights" / ".." / "weights", tmp / "home_a"),
        "symlink": (tmp / "link" / data, tmp / "wlink", tmp / "home_c"),
    }
    got = {name: _fingerprints(_config(d, w), home) for name, (d, w, home) in spellings.items()}
    first = got["checkout a"]
    assert set(first) >= {"images", "encoder_features", "svd", "level_1_latents", "level_0_model",
                          "samples", "reference_stats", "evaluation", "level_neighbours", "config"}
    for name, fps in got.items():
        assert fps == first, name


def test_touch_keeps_content_change_moves(tmp_path):
    packaged = resolve_weights(TINY["encoder"]["weights"])
    co = _checkout(tmp_path / "co", packaged)
    home = tmp_path / "home"
    npz, folder, weights = co / "data" / "x.npz", co / "data" / "imgs", co / "weights"
    for data, edit in [(npz, lambda: _npz(npz, bump=True)), (folder, lambda: _bump_png(folder / "dogs" / "3.png"))]:
        cfg = _config(data, weights)
        before = _fingerprints(cfg, home)
        _touch(data if data.is_file() else folder / "cats" / "0.png")
        _touch(weights / "lite0.pth")
        if data.is_dir():
            (folder / ".DS_Store").write_bytes(b"finder, rewritten")  # hidden files are not data
            (folder / ".ipynb_checkpoints").mkdir()
            (folder / ".ipynb_checkpoints" / "0.png").write_bytes(b"scratch")
        assert _fingerprints(cfg, home) == before
        edit()
        after = _fingerprints(cfg, home)
        moved = {k for k in before if after[k] != before[k]}
        assert moved == set(before), sorted(set(before) - moved)  # images, and everything is downstream of them


def _bump_png(p: Path) -> None:
    a = np.asarray(Image.open(p)).copy()
    a[0, 0, 0] ^= 1
    Image.fromarray(a).save(p)


def test_checkpoint_content_moves_features_not_images(tmp_path):
    packaged = resolve_weights(TINY["encoder"]["weights"])
    co = _checkout(tmp_path / "co", packaged)
    cfg = _config(co / "data" / "x.npz", co / "weights")
    before = _fingerprints(cfg, tmp_path / "home")
    with open(co / "weights" / "lite0.pth", "r+b") as f:  # one byte of the checkpoint
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    after = _fingerprints(cfg, tmp_path / "home")
    assert after["images"] == before["images"]
    assert after["encoder_features"] != before["encoder_features"]
    assert after["level_1_latents"] != before["level_1_latents"] and after["config"] != before["config"]


def _store(home: Path) -> Path:
    tables = list((home / STORE_DIR).glob("*.parquet"))
    assert len(tables) == 1 and not list((home / STORE_DIR).glob("*.tmp-*"))
    return tables[0]


def _counting_hashes(monkeypatch) -> list[str]:
    hashed = []
    digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, *a: (hashed.append(f.name), digest(f, *a))[1])
    return hashed


def test_folder_hash_cache_is_kept_and_survives_corruption(tmp_path, monkeypatch):
    # Files made a moment ago have a ctime of now, which _age cannot set back: out of the racy window, they are kept.
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)
    root = tmp_path / "imgs"
    _folder(root)
    _age(root)
    cfg = DatasetConfig(source="folder", path=root)
    home = tmp_path / "home"
    (home / HASH_CACHE_V1).parent.mkdir(parents=True)
    (home / HASH_CACHE_V1).write_text("{}")  # the former whole-dict store goes
    fp = source_fingerprint(cfg, cache_dir=home)
    assert not (home / HASH_CACHE_V1).exists()
    rels = pq.read_table(_store(home)).column("rel").to_pylist()
    assert rels == sorted(f"{c}/{i}.png" for c in ("cats", "dogs") for i in range(10))  # the visible files, sorted

    # Another process reuses the kept hashes instead of reading the files again, and leaves the table as it was.
    hashed = _counting_hashes(monkeypatch)
    mtime = _store(home).stat().st_mtime_ns
    assert source_fingerprint(cfg, cache_dir=home) == fp
    assert hashed == [] and _store(home).stat().st_mtime_ns == mtime

    # A corrupt table is only a cache: hashed again, same fingerprint, table rewritten.
    _store(home).write_bytes(b"PAR1 not parquet")
    assert source_fingerprint(cfg, cache_dir=home) == fp
    assert len(hashed) == 20 and pq.read_table(_store(home)).num_rows == 20
    _store(home).unlink()
    assert source_fingerprint(cfg, cache_dir=home) == fp
    assert source_fingerprint(cfg) == fp  # no cache dir at all

    # A rewritten file (new size, mtime or inode) is hashed again, alone, whatever the table holds.
    hashed.clear()
    _bump_png(root / "cats" / "4.png")
    _age(root / "cats" / "4.png")
    assert source_fingerprint(cfg, cache_dir=home) != fp
    assert [Path(h).name for h in hashed] == ["4.png"]


def test_folder_hash_table_follows_files_added_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)
    root = tmp_path / "imgs"
    _folder(root)
    cfg = DatasetConfig(source="folder", path=root)
    home = tmp_path / "home"
    source_fingerprint(cfg, cache_dir=home)
    (root / "cats" / "3.png").unlink()
    shutil.copy(root / "dogs" / "1.png", root / "dogs" / "10.png")
    shutil.copy(root / "dogs" / "1.png", root / "zebras.png")  # after every kept row: written at the end
    hashed = _counting_hashes(monkeypatch)
    fp = source_fingerprint(cfg, cache_dir=home)
    assert sorted(Path(h).name for h in hashed) == ["10.png", "zebras.png"]
    rels = pq.read_table(_store(home)).column("rel").to_pylist()
    assert rels == sorted(rels) and len(rels) == 21 and "cats/3.png" not in rels and "zebras.png" in rels
    hashed.clear()
    (home / STORE_DIR).chmod(0o500)  # a read-only home costs the hashing again, never the fingerprint
    try:
        (root / "zebras.png").unlink()
        assert source_fingerprint(cfg, cache_dir=home) != fp and hashed == []
    finally:
        (home / STORE_DIR).chmod(0o700)


def _old_folder_identity(root: Path, sha256) -> str:
    """The listing as it was computed before it streamed: every fingerprint recorded since must stay the same."""
    found = [p for p in root.iterdir() if not p.name.startswith(".") and p.is_file()]
    for d in sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()):
        for dirpath, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if not x.startswith(".")]
            found += [p for p in (Path(dirpath) / f for f in files) if not p.name.startswith(".") and p.is_file()]
    listing = [(p.relative_to(root).as_posix(), p) for p in found]
    return "".join(f"\0{rel}\0{sha256(full)}" for rel, full in sorted(listing))


def test_streamed_folder_listing_sorts_as_the_full_paths_do(tmp_path):
    # Names around "/" in code-point order ("a.png" < "a/..." < "a0"), deep folders, non-ASCII, hidden entries and
    # links: streaming one folder at a time must give the listing, and so the fingerprint, that sorting gave.
    root = tmp_path / "imgs"
    for rel in ["a.png", "a/x.png", "a/b/c.png", "a/b.png", "a-b/y.png", "a0.png", "B/z.png", "é/w.png", "top.png",
                "a/.ipynb_checkpoints/x.png", "a/.hidden.png", "a b/q.png", "ab/a/a/a.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "a" / "linked").symlink_to(root / "B")              # a directory link: never followed
    (root / "loop").symlink_to(root)
    (root / "a" / "file-link.png").symlink_to(root / "top.png")  # a file link: read, as the reader reads it
    cfg = DatasetConfig(source="folder", path=root)
    streamed = "".join(folder_identity(cfg, lambda r, rel: hashlib.sha256((Path(r) / rel).read_bytes()).hexdigest()))
    assert streamed == _old_folder_identity(root, lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
    assert streamed.count("\0") == 2 * 12


def test_folder_fingerprint_holds_no_record_per_file(tmp_path, monkeypatch):
    # The table is read and written one batch at a time: memory for 4x the files stays where it was.
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)
    monkeypatch.setattr(source_hashes, "BATCH", 128)
    peaks = []
    for n in (500, 2000):
        root = tmp_path / f"imgs{n}"
        for i in range(n):
            (root / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
            (root / f"c{i % 10}" / f"{i:05d}.png").write_bytes(i.to_bytes(4, "little"))
        cfg = DatasetConfig(source="folder", path=root)
        source_fingerprint(cfg, cache_dir=tmp_path / "home")  # hashed and kept
        (root / "c0" / "00000.png").write_bytes(b"changed")      # the table is rewritten, streamed
        tracemalloc.start()
        source_fingerprint(cfg, cache_dir=tmp_path / "home")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


def _edit_keeping_size_and_mtime(p: Path) -> None:
    st = p.stat()
    with open(p, "r+b") as f:
        data = bytearray(f.read())
        data[-30] ^= 1  # inside the zip's central directory: same size
        f.seek(0)
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, same inode, same size
    assert (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_fresh_file_is_not_trusted_to_its_mtime(tmp_path):
    # Written twice within one timestamp tick, a file can keep size, mtime and inode: recent files are rehashed.
    p = tmp_path / "x.npz"
    _npz(p)
    cfg = DatasetConfig(source="npz", path=p)
    fp = source_fingerprint(cfg, cache_dir=tmp_path / "home")
    _edit_keeping_size_and_mtime(p)
    assert source_fingerprint(cfg, cache_dir=tmp_path / "home") != fp


def test_an_edit_that_puts_the_mtime_back_is_hashed_again(tmp_path, monkeypatch):
    # Same size, same inode, the mtime restored (touch -d, rsync -t, a restore): only the ctime tells. With the racy
    # window off, the kept hash would be trusted on (size, mtime, inode) alone.
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)
    p = tmp_path / "x.npz"
    _npz(p)
    _age(p)
    cfg = DatasetConfig(source="npz", path=p)
    home = tmp_path / "home"
    fp = source_fingerprint(cfg, cache_dir=home)
    time.sleep(0.05)  # past the coarse clock's tick, so the ctime moves
    _edit_keeping_size_and_mtime(p)
    assert source_fingerprint(cfg, cache_dir=home) != fp
