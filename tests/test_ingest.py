"""Ingest on tiny synthetic sources built in tmp_path (never the 74 MB emoji tgz: that is checked by hand)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image

import pipeline.ingest as ingest_module
from pipeline.config import ConfigError, parse_config
from pipeline.data import iter_pixels
from pipeline.engine import LocalEngine
from pipeline.features import image_batches
from pipeline.fingerprints import config_fingerprint
from pipeline.ingest import (LEVEL0_PNG, SOURCE_PNG, image_shards, ingest, ingest_workers, label_names, level0_png,
                             map_in_order, prepare_image, read_manifest, source_fingerprint, source_png, to_rgb)
from pipeline.schema import ComputeConfig, DatasetConfig

RES, SRC = 16, 24


def _quiet(_msg: str) -> None:
    pass


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _noise(size=(40, 30), mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((len(mode),) if len(mode) > 1 else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _read_back(out: Path) -> list[dict]:
    ds = wds.WebDataset(image_shards(out), shardshuffle=False)
    return list(ds)


def _decode(b: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(b))
    img.load()
    return img


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "sub").mkdir(parents=True)
    _noise(seed=1).save(root / "cats" / "a.png")
    _noise(seed=2).save(root / "cats" / "b.jpg", quality=90)
    (root / "cats" / "bad.png").write_bytes(np.random.default_rng(3).bytes(500))  # not an image at all
    jpeg = _png_bytes(_noise((64, 64), seed=4), "JPEG")
    (root / "dogs" / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    _noise(mode="L", seed=5).save(root / "dogs" / "gray.png")
    _noise(seed=6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "dogs" / "pal.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 0)      # left half: red, but fully transparent -> must come out white
    rgba[:, 16:] = (0, 0, 255, 255)    # right half: opaque blue
    Image.fromarray(rgba, "RGBA").save(root / "dogs" / "sub" / "alpha.png")
    _noise(seed=7).save(root / "loose.png")  # directly in the root -> "unlabeled"
    (root / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()
    return root


def test_folder(folder: Path, tmp_path: Path):
    cfg = DatasetConfig(source="folder", path=folder, resolution=RES, source_size=SRC, shard_size=3)
    logged = []
    meta = ingest(cfg, tmp_path / "out", log=logged.append)
    out = tmp_path / "out"

    good = ["cats/a.png", "cats/b.jpg", "dogs/gray.png", "dogs/pal.png", "dogs/sub/alpha.png", "loose.png"]
    assert meta["num_images"] == len(good)
    assert meta["num_train"] + meta["num_holdout"] == len(good)
    assert meta["num_skipped"] == 2
    assert [s.split(":")[0] for s in meta["skipped"]] == ["cats/bad.png", "dogs/trunc.jpg"]
    assert any("trunc.jpg" in m for m in logged)
    assert meta["label_counts"] == {"cats": 2, "dogs": 3, "unlabeled": 1}
    assert label_names(out) == ["cats", "dogs", "unlabeled"]
    assert meta["shards"] == ["images-000000.tar", "images-000001.tar"]

    m = read_manifest(out).to_pylist()
    assert [r["source"] for r in m] == sorted(good)
    assert [r["id"] for r in m] == [f"{i:07d}" for i in range(len(good))]
    by_src = {r["source"]: r for r in m}
    assert by_src["dogs/sub/alpha.png"]["label_name"] == "dogs" and by_src["dogs/sub/alpha.png"]["label"] == 1
    assert by_src["loose.png"]["label"] == 2
    assert by_src["cats/a.png"]["content_hash"] == hashlib.sha256((folder / "cats" / "a.png").read_bytes()).hexdigest()

    samples = _read_back(out)
    assert [s["__key__"] for s in samples] == [r["id"] for r in m]
    for s, r in zip(samples, m):
        assert os.path.basename(s["__url__"]) == r["shard"]
        assert int(s["cls"]) == r["label"]
        assert json.loads(s["json"]) == {"source": r["source"], "split": r["split"]}
        img, src = _decode(s["img.png"]), _decode(s["src.png"])
        assert (img.mode, img.size, src.mode, src.size) == ("RGB", (RES, RES), "RGB", (SRC, SRC))

    by_key = {r["source"]: s for s, r in zip(samples, m)}
    alpha = np.asarray(_decode(by_key["dogs/sub/alpha.png"]["img.png"]))
    assert (alpha[:, :4] >= 250).all()                                    # transparent -> white
    assert (alpha[:, -4:, 2] >= 250).all() and (alpha[:, -4:, :2] <= 5).all()  # opaque blue stays blue
    gray = np.asarray(_decode(by_key["dogs/gray.png"]["src.png"]))
    assert gray.shape == (SRC, SRC, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_empty_and_unreadable_sources(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        ingest(DatasetConfig(source="folder", path=empty), tmp_path / "o1", log=_quiet)
    broken = tmp_path / "broken"
    (broken / "c").mkdir(parents=True)
    (broken / "c" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=rf"{broken}.*tried 1 files"):
        ingest(DatasetConfig(source="folder", path=broken), tmp_path / "o2", log=_quiet)
    missing = tmp_path / "nope.tgz"
    with pytest.raises(FileNotFoundError, match="nope.tgz"):
        ingest(DatasetConfig(source="emoji", path=missing), tmp_path / "o3", log=_quiet)
    with pytest.raises(FileNotFoundError, match="nope.tgz"):
        source_fingerprint(DatasetConfig(source="emoji", path=missing))


def test_npz(tmp_path: Path):
    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.npz"
    np.savez(p, images=rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8), labels=np.array([1, 0, 1, 1, 0]),
             label_names=np.array(["zero", "one"]))
    meta = ingest(DatasetConfig(source="npz", path=p, resolution=RES, source_size=SRC), tmp_path / "o1", log=_quiet)
    m = read_manifest(tmp_path / "o1").to_pylist()
    assert meta["num_images"] == 5 and meta["label_counts"] == {"zero": 2, "one": 3}
    assert [r["source"] for r in m] == [f"images[{i}]" for i in range(5)]
    assert [r["label_name"] for r in m] == ["one", "zero", "one", "one", "zero"]

    p = tmp_path / "gray.npz"
    np.savez(p, images=rng.random((4, 9, 9)), labels=np.array([0, 2, 2, 0]))
    meta = ingest(DatasetConfig(source="npz", path=p, resolution=RES, source_size=SRC), tmp_path / "o2", log=_quiet)
    assert label_names(tmp_path / "o2") == ["0", "2"] and meta["num_images"] == 4
    img = np.asarray(_decode(_read_back(tmp_path / "o2")[0]["img.png"]))
    assert img.shape == (RES, RES, 3) and img.max() > 128  # [0, 1] floats were scaled to 0..255

    p = tmp_path / "wrong.npz"
    np.savez(p, pixels=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"wrong\.npz.*'pixels'.*'y'"):
        ingest(DatasetConfig(source="npz", path=p), tmp_path / "o3", log=_quiet)


def _emoji_png(color, seed) -> bytes:
    a = np.zeros((64, 64, 4), np.uint8)
    a[16:48, 16:48] = (*color, 255)  # opaque square on a transparent canvas, like the real emoji
    a[0, 0, :3] = seed  # distinct bytes per file
    return _png_bytes(Image.fromarray(a, "RGBA"))


def test_emoji_tgz(tmp_path: Path):
    entries = [
        {"image": "1f600.png", "category": "Smileys & Emotion"},
        {"image": "1f44b.png", "category": "People & Body",
         "skin_variations": {"1F3FB": {"image": "1f44b-1f3fb.png"}}},
        {"image": "1f3fb.png", "category": "Component", "skin_variations": None},
    ]
    files = {f"package/img/google/64/{e}": _emoji_png((200, 50, 50), i)
             for i, e in enumerate(["1f600.png", "1f44b.png", "1f44b-1f3fb.png", "1f3fb.png"])}
    files["package/img/google/32/1f600.png"] = b"other size, ignored"
    files["package/emoji.json"] = json.dumps(entries).encode()  # after the images: order must not matter
    tgz = tmp_path / "emoji.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    meta = ingest(DatasetConfig(source="emoji", path=tgz, resolution=RES, source_size=SRC), tmp_path / "out",
                  log=_quiet)
    assert label_names(tmp_path / "out") == ["People & Body", "Smileys & Emotion"]
    assert meta["num_images"] == 3 and meta["num_skipped"] == 0 and meta["num_dropped"] == 1
    m = read_manifest(tmp_path / "out").to_pylist()
    assert {r["source"]: r["label_name"] for r in m} == {
        "1f44b-1f3fb.png": "People & Body", "1f44b.png": "People & Body", "1f600.png": "Smileys & Emotion"}
    assert [r["source"] for r in m] == sorted(r["source"] for r in m)
    corner = np.asarray(_decode(_read_back(tmp_path / "out")[0]["src.png"]))[1, 1]
    assert (corner >= 250).all()


def test_digits_subset_and_split(tmp_path: Path):
    cfg = DatasetConfig(source="digits", resolution=RES, source_size=SRC, max_images=50, shard_size=20)
    a = ingest(cfg, tmp_path / "a", seed=3, log=_quiet)
    b = ingest(cfg, tmp_path / "b", seed=3, log=_quiet)
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert a["num_images"] == ma.num_rows == 50 and len(a["shards"]) == 3
    assert ma.column("id").to_pylist() == mb.column("id").to_pylist()
    assert ma.column("content_hash").to_pylist() == mb.column("content_hash").to_pylist()
    idx = [int(s[len("digits["):-1]) for s in ma.column("source").to_pylist()]
    assert idx == sorted(idx)  # the subset keeps source order
    ingest(cfg, tmp_path / "c", seed=4, log=_quiet)
    c = read_manifest(tmp_path / "c")
    assert c.column("source").to_pylist() != ma.column("source").to_pylist()

    full = ingest(DatasetConfig(source="digits", resolution=8, source_size=8, holdout_fraction=0.2),
                  tmp_path / "full", log=_quiet)
    assert full["num_images"] == 1797 and label_names(tmp_path / "full") == [str(i) for i in range(10)]
    assert 0.15 < full["num_holdout"] / full["num_images"] < 0.25
    # The split is a function of content alone: the subset's images sit in the same split as in the full run.
    mf = read_manifest(tmp_path / "full")
    split_of = dict(zip(mf.column("content_hash").to_pylist(), mf.column("split").to_pylist()))
    cfg20 = cfg.model_copy(update={"holdout_fraction": 0.2})
    ingest(cfg20, tmp_path / "d", log=_quiet)
    sub = read_manifest(tmp_path / "d")
    assert all(split_of[h] == s for h, s in zip(sub.column("content_hash").to_pylist(),
                                                sub.column("split").to_pylist()))


def test_mnist_small(tmp_path: Path):
    meta = ingest(DatasetConfig(source="mnist", resolution=RES, source_size=SRC, max_images=20), tmp_path / "o",
                  log=_quiet)
    assert meta["num_images"] == 20 and set(label_names(tmp_path / "o")) == {str(i) for i in range(10)}


def test_fingerprint(folder: Path, tmp_path: Path):
    cfg = DatasetConfig(source="folder", path=folder)
    fp = source_fingerprint(cfg)
    assert source_fingerprint(cfg) == fp
    target = folder / "cats" / "a.png"
    st = target.stat()
    _noise(seed=99, size=(41, 30)).save(target)  # new content (and size)
    fp2 = source_fingerprint(cfg)
    assert fp2 != fp
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only: same content, same fingerprint
    assert source_fingerprint(cfg) == fp2

    p = tmp_path / "x.npz"
    np.savez(p, images=np.zeros((1, 4, 4), np.uint8))
    npz = DatasetConfig(source="npz", path=p)
    fp_npz = source_fingerprint(npz)
    assert source_fingerprint(npz) == fp_npz
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    assert source_fingerprint(npz) == fp_npz
    assert source_fingerprint(DatasetConfig(source="digits")) == source_fingerprint(DatasetConfig(source="digits"))
    assert source_fingerprint(DatasetConfig(source="digits")) != source_fingerprint(DatasetConfig(source="mnist"))


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(np.full((4, 4), 65535, np.uint16)),              # 16-bit gray
    lambda: Image.fromarray(np.full((4, 4), 1.0, np.float32), "F"),          # float in [0, 1]
    lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)),                         # CMYK white
    lambda: Image.new("LA", (4, 4), (0, 0)),                                 # transparent black
    lambda: Image.new("1", (4, 4), 1),
])
def test_to_rgb_white(make):
    img = to_rgb(make())
    assert img.mode == "RGB" and (np.asarray(img) >= 254).all()


def test_directory_links_are_not_followed_out_of_or_back_into_the_root(tmp_path: Path):
    """`self -> root` and `up -> ..` made 72 images in classes c1, c2, self, up of 24 in two; and nothing they lead
    to enters the fingerprint."""
    from pipeline.sources import get_source

    root = tmp_path / "data" / "root"
    for c in ("c1", "c2"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            _noise((8, 8), seed=i + (100 if c == "c2" else 0)).save(root / c / f"{i}.png")
    cfg = DatasetConfig(source="folder", path=root)
    before = source_fingerprint(cfg)
    (root / "self").symlink_to(root, target_is_directory=True)
    (root / "up").symlink_to("..", target_is_directory=True)
    (root / "c1" / "loop").symlink_to(root, target_is_directory=True)
    listing = get_source("folder").read(cfg)
    items, names = list(listing.items()), listing.names
    assert names == ["c1", "c2"] and len(items) == 24 and listing.counts == {"c1": 12, "c2": 12}
    assert {it.label_name for it in items} == {"c1", "c2"} and not any("loop" in it.name for it in items)
    assert source_fingerprint(cfg) == before


# ---------------------------------------------------------------- parallel ingest, one copy at equal sizes

TIMING = ("ingest_workers", "images_per_second")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_bytes_whatever_the_number_of_workers(folder: Path, tmp_path: Path, monkeypatch):
    """Shards, manifest (keys, splits, labels) and the skipped files, byte for byte, from 1 and 2 worker processes
    (and manifest rows batched differently);
    chunks of 2 images, so that 2 workers each get several and more are in flight than there are workers."""
    monkeypatch.setattr(ingest_module, "CHUNK", 2)
    monkeypatch.setattr(ingest_module, "ROW_GROUP", 4)  # the manifest in two row groups
    cfg = DatasetConfig(source="folder", path=folder, resolution=RES, source_size=SRC, shard_size=3)
    metas = {}
    # and the same bytes whether a row group's rows became Arrow columns at once or in batches of 3 and 1
    for w, row_batch in ((1, 4), (2, 3)):
        monkeypatch.setattr(ingest_module, "ROW_BATCH", row_batch)
        metas[w] = ingest(cfg, tmp_path / f"w{w}", log=_quiet, workers=w)
    assert pq.ParquetFile(tmp_path / "w2" / "manifest.parquet").num_row_groups == 2
    assert read_manifest(tmp_path / "w2").column("id").to_pylist() == [f"{i:07d}" for i in range(6)]
    assert label_names(tmp_path / "w2") == ["cats", "dogs", "unlabeled"]
    assert metas[1]["ingest_workers"] == 1 and metas[2]["ingest_workers"] == 2
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
    assert len(_files(tmp_path / "w1")) == 3  # two shards and the manifest
    strip = [{k: v for k, v in m.items() if k not in TIMING} for m in metas.values()]
    assert strip[0] == strip[1]
    assert [s.split(":")[0] for s in metas[2]["skipped"]] == ["cats/bad.png", "dogs/trunc.jpg"]


def test_rebuilding_gives_the_same_bytes(tmp_path: Path):
    """The tar members carry a fixed mtime: a second build is the same files (and the same content digest)."""
    cfg = DatasetConfig(source="digits", resolution=8, source_size=16, max_images=10)
    ingest(cfg, tmp_path / "a", log=_quiet)
    ingest(cfg, tmp_path / "b", log=_quiet)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_in_flight_chunks_are_bounded():
    """map_in_order draws a chunk only when one of AHEAD x workers is consumed: memory does not grow with N."""
    drawn = 0

    def chunks():
        nonlocal drawn
        for i in range(40):
            drawn += 1
            yield [i]

    for consumed, result in enumerate(map_in_order(list, chunks(), workers=2), start=1):
        assert result == [consumed - 1]  # in order
        assert drawn - consumed < ingest_module.AHEAD * 2
    assert drawn == 40


def test_a_folder_is_ingested_without_holding_its_listing(tmp_path: Path, monkeypatch):
    """The items alive while the shards are written are the chunks in flight, not one per file: ImageNet's 1.28M
    listed at ~1.2 kB each would be 1.5 GB. Counted at every chunk, with drop_categories and max_images on."""
    import gc

    from pipeline.sources import Item

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(40):
            _noise((6, 6), seed=i).save(tmp_path / c / f"{i:03d}.png")
    monkeypatch.setattr(ingest_module, "CHUNK", 4)
    alive: list[int] = []
    prepare = ingest_module.prepare_chunk

    def counting(tasks, **kw):
        alive.append(sum(isinstance(o, Item) for o in gc.get_objects()))
        return prepare(tasks, **kw)

    monkeypatch.setattr(ingest_module, "prepare_chunk", counting)
    cfg = DatasetConfig(source="folder", path=tmp_path, resolution=8, source_size=8, drop_categories=["b"],
                        max_images=60)
    meta = ingest(cfg, tmp_path / "out", log=_quiet, workers=1)
    assert meta["num_images"] == 60 and meta["num_dropped"] == 40 and len(alive) == 15
    assert max(alive) <= 2 * 4, alive
    # the same 60 as a subsample drawn from the whole list (seed 0) of the 80 kept
    keep = np.sort(np.random.default_rng(0).choice(80, 60, replace=False))
    kept = [f"{c}/{i:03d}.png" for c in ("a", "c") for i in range(40)]
    assert read_manifest(tmp_path / "out").column("source").to_pylist() == [kept[i] for i in keep]


def _equal_size_folder(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            _noise((40 + 7 * i, 30), seed=10 * i + (c == "b")).save(root / c / f"{i}.png")
    return root


class _SourcePngs:
    """An engine worker as the features stage's Encode is one: fed column batches of undecoded samples."""

    def __call__(self, batch: dict) -> dict:
        return {"__key__": batch["__key__"], "src": [np.asarray(_decode(b)) for b in source_png(batch)]}


def test_equal_sizes_store_one_png_that_every_reader_reads(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK", 2)
    root = _equal_size_folder(tmp_path / "src")
    cfg = DatasetConfig(source="folder", path=root, resolution=RES, source_size=RES, holdout_fraction=0.3)
    out = tmp_path / "out"
    meta = ingest(cfg, out, log=_quiet, workers=2)
    assert meta["pngs_per_image"] == 1
    samples = _read_back(out)
    assert all({k for k in s if not k.startswith("__")} == {LEVEL0_PNG, "cls", "json"} for s in samples)
    assert all(source_png(s) is level0_png(s) for s in samples)

    # What each reader gets is what ingest prepares from the raw file, at the one size.
    m = read_manifest(out).to_pylist()
    expected = {r["id"]: prepare_image((root / r["source"]).read_bytes(), cfg) for r in m}
    assert all(np.array_equal(level0, src) for level0, src in expected.values())
    split = {r["id"]: r["split"] for r in m}
    pixels = {k: x for sp in ("train", "holdout") for k, x, _ in iter_pixels(out, sp)}
    assert sorted(pixels) == sorted(expected) and set(split.values()) == {"train", "holdout"}
    for key, x in pixels.items():
        np.testing.assert_array_equal(np.rint((x + 1.0) * 127.5).astype(np.uint8), expected[key][0].transpose(2, 0, 1))
    encoder_input = {k: a for keys, batch in image_batches(out, 4) for k, a in zip(keys, batch)}
    assert all(np.array_equal(encoder_input[k], expected[k][1]) for k in expected)
    spread = {k: a for b in LocalEngine().map_shards(image_shards(out), _SourcePngs, {}, 4)
              for k, a in zip(b["__key__"], b["src"])}
    assert all(np.array_equal(spread[k], expected[k][1]) for k in expected)


def test_two_sizes_keep_both_pngs_and_each_reader_its_own(tmp_path: Path):
    """Artifacts with both members (other sizes, or ingested before one copy sufficed) read as they always did."""
    root = _equal_size_folder(tmp_path / "src")
    out = tmp_path / "out"
    meta = ingest(DatasetConfig(source="folder", path=root, resolution=RES, source_size=SRC), out, log=_quiet)
    assert meta["pngs_per_image"] == 2
    assert all({LEVEL0_PNG, SOURCE_PNG} <= set(s) for s in _read_back(out))
    assert {x.shape for _, x, _ in iter_pixels(out, "train")} == {(3, RES, RES)}
    assert {batch.shape[1:] for _, batch in image_batches(out, 4)} == {(SRC, SRC, 3)}
    both = {LEVEL0_PNG: b"level 0", SOURCE_PNG: b"encoder"}
    assert (level0_png(both), source_png(both)) == (b"level 0", b"encoder")


TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


@pytest.mark.parametrize("value,reason", [(0, "greater than or equal to 1"), (-2, "greater than or equal to 1"),
                                          ("many", "valid integer")])
def test_ingest_workers_refused_by_field(value, reason):
    data = yaml.safe_load(TINY.read_text())
    data.setdefault("compute", {})["ingest_workers"] = value
    with pytest.raises(ConfigError) as e:
        parse_config(data, "test.yaml")
    assert "compute.ingest_workers" in str(e.value) and reason in str(e.value), str(e.value)


def test_ingest_workers_change_no_fingerprint():
    data = yaml.safe_load(TINY.read_text())
    fps = set()
    for workers in (None, 1, 3):
        data.setdefault("compute", {})["ingest_workers"] = workers
        fps.add(config_fingerprint(parse_config(data, "test.yaml")))
    assert len(fps) == 1
    assert ingest_workers(ComputeConfig(ingest_workers=3)) == 3
    assert ingest_workers(ComputeConfig()) == len(os.sched_getaffinity(0))
