"""Ingest: turn a raw image source into RGB WebDataset shards plus a Parquet manifest.

The sources (the emoji npm tgz, a folder of class subfolders, an npz of arrays, and two small sets that ship
inside wheels) are pipeline/sources.py's registry. Every image leaves here as square RGB PNGs: ``img.png`` at
cfg.resolution (level 0 of the diffusion model) and ``src.png`` at cfg.source_size (what the encoder reads),
or ``img.png`` alone where the two sizes are equal (the readers, `level0_png` and `source_png`, read it for
both). Decoding, resizing and PNG encoding run in `compute.ingest_workers` processes; the shards are written
here, in source order, so the output is the same bytes whatever the number of workers. Unreadable files are
skipped and reported rather than failing the whole run.
"""
from __future__ import annotations

import gc
import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .cache import listed_files
from .runtime import large_blocks_returned
from .schema import ComputeConfig, Config, DatasetConfig
from .source_hashes import SourceHashes
from .sources import Item, Listing, get_source

SHARD_PATTERN = "images-%06d.tar"
MANIFEST = "manifest.parquet"
LEVEL0_PNG = "img.png"   # dataset.resolution: level 0; always stored
SOURCE_PNG = "src.png"   # dataset.source_size: the encoder's input; stored only where it differs from level 0
SHARD_MTIME = 0          # every tar member's mtime: the shards are the same bytes on every run
CHUNK = 32               # images per task of a worker: large enough that the hand-over costs nothing beside them
AHEAD = 2                # chunks in flight per worker: keeps every worker busy, and memory bounded whatever N
ROW_GROUP = 8192         # manifest rows written at a time (a Parquet row group: ~157 for ImageNet)
ROW_BATCH = 512          # manifest rows held as Python objects before they become Arrow columns
# Blocks above this are mapped on their own and unmapped when freed while images are prepared: a 256 px image's
# buffers (256 kB decoded, ~100 kB of PNG) from the heap left it 4-9 MiB of holes at 6,000 images, still growing;
# mapped, the heap stays flat (measured at 6,000: +6.5 MiB against +0.1) at no cost in time (24.0 s both ways).
IMAGE_BLOCKS = 64 << 10

MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("label", pa.int32()), ("label_name", pa.string()), ("source", pa.string()),
    ("content_hash", pa.string()), ("split", pa.string()), ("shard", pa.string()),
])


# ---------------------------------------------------------------- fingerprint

def source_fingerprint(cfg: DatasetConfig, cache_dir: Path | None = None) -> str:
    """Content identity of the raw source, for the cache key: the same bytes give the same fingerprint wherever
    the source lies, however its path is spelled and whatever its mtime.

    What stands for the content is the source's registered identity (pipeline/sources.py: file hashes, or a
    package version). With a `cache_dir`, file hashes are kept there and reused while a file's stat key is
    unchanged (pipeline/source_hashes.py); without one, every file is hashed.
    """
    source = get_source(cfg.source)
    h = hashlib.sha256(cfg.source.encode())
    with SourceHashes(cache_dir) as hashes:
        for part in source.identity(cfg, hashes):
            h.update(part.encode())
    return h.hexdigest()


# ---------------------------------------------------------------- images

def _decode(data: bytes | np.ndarray) -> Image.Image:
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # PIL's message names the buffer by its memory address: said again without it, a skip reads the same in
        # every run and from any worker.
        raise UnidentifiedImageError("cannot identify image file: not an image format PIL reads") from None
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


def png_members(img: Image.Image, resolution: int, source_size: int) -> dict[str, bytes]:
    """An RGB image as a sample's PNG members: level 0, and the encoder's size where it is another size (at equal
    sizes the two would be the same bytes: the paper's 256 px ImageNet would store every image twice)."""
    members = {LEVEL0_PNG: _png(img, resolution)}
    if source_size != resolution:
        members[SOURCE_PNG] = _png(img, source_size)
    return members


def prepare_image(data: bytes, cfg: DatasetConfig) -> tuple[np.ndarray, np.ndarray]:
    """One raw image as ingest stores it: (level-0 image, encoder-size image), each uint8 (H, W, 3)."""
    img = to_rgb(_decode(data))
    return np.asarray(_fit(img, cfg.resolution)), np.asarray(_fit(img, cfg.source_size))


def _content_hash(raw: bytes | np.ndarray) -> str:
    return hashlib.sha256(raw if isinstance(raw, bytes) else np.ascontiguousarray(raw).tobytes()).hexdigest()


def _is_holdout(content_hash: str, fraction: float) -> bool:
    # Decided by content, so adding or reordering images never moves an image between splits.
    return int(hashlib.sha256(content_hash.encode()).hexdigest()[:8], 16) / 2**32 < fraction


# ---------------------------------------------------------------- the workers' part

# One image's task: (its data, whether the source gave it a label). Its result: (PNG members, content hash), or why
# it was skipped ("TypeName: message").
Task = tuple[bytes | np.ndarray | Path, bool]
Prepared = tuple[dict[str, bytes], str]


def _prepare(task: Task, resolution: int, source_size: int) -> Prepared:
    data, labelled = task
    if not labelled:
        raise ValueError("no label for this image in the source's metadata")
    raw = data.read_bytes() if isinstance(data, Path) else data  # read here, in the worker: folders can be large
    return png_members(to_rgb(_decode(raw)), resolution, source_size), _content_hash(raw)


def prepare_chunk(tasks: list[Task], resolution: int, source_size: int) -> list[Prepared | str]:
    """A worker's job: each image decoded, fitted and PNG-encoded, or the reason it could not be."""
    out: list[Prepared | str] = []
    for task in tasks:
        try:
            out.append(_prepare(task, resolution, source_size))
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            out.append(f"{type(e).__name__}: {e}")
    return out


def _worker_context() -> mp.context.BaseContext:
    # Forked workers start at once with this module imported (it imports the schema, and so torch: a spawned
    # worker would spend seconds and ~1 GB importing it again); they run no thread of their own, and only PIL,
    # numpy and hashlib, as PyTorch's DataLoader forks its workers on Linux.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)


def _start(pool: ProcessPoolExecutor, fn: Callable, chunk: list):
    """Submit the first chunk, which forks every worker: the objects alive now (an in-memory source's items among them)
    are frozen out of the garbage collector first, so a worker's collection cannot touch, and copy, their pages."""
    gc.freeze()
    try:
        return pool.submit(fn, chunk)
    finally:
        gc.unfreeze()


def map_in_order(fn: Callable[[list], list], chunks: Iterable[list], workers: int) -> Iterator[list]:
    """fn over the chunks, results in the chunks' order: here with one worker, else in `workers` processes with at
    most AHEAD x workers chunks submitted and not yet consumed (memory bounded whatever the number of chunks)."""
    if workers == 1:
        yield from map(fn, chunks)
        return
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        return
    pool = ProcessPoolExecutor(workers, mp_context=_worker_context())
    try:
        pending = deque([_start(pool, fn, first)])
        while pending:
            # A chunk is drawn (and, for a folder, its files read) only when there is room for it.
            while len(pending) < AHEAD * workers and (chunk := next(chunks, None)) is not None:
                pending.append(pool.submit(fn, chunk))
            yield pending.popleft().result()
    finally:  # also when the consumer stops early or fails: queued chunks are dropped, not computed
        pool.shutdown(wait=True, cancel_futures=True)


def ingest_workers(compute: ComputeConfig) -> int:
    """compute.ingest_workers, or (None) the CPUs this process may run on."""
    if compute.ingest_workers is not None:
        return compute.ingest_workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- ingest

def build_images(cfg: Config, plan: dict, out_dir: Path, log: Callable[[str], None] = print) -> dict:
    """The images stage: the configured source as shards and a manifest, split by content (`cfg.seed` picks
    the `max_images` subset)."""
    return ingest(cfg.dataset, out_dir, cfg.seed, log, workers=ingest_workers(cfg.compute))


@dataclass(frozen=True)
class _Selection:
    """What the stage ingests: the source's items less `drop_categories`, subsampled to `max_images`; walked once,
    as the shards are written, so that a folder's listing is never held."""
    listing: Listing
    drop: frozenset[str]
    keep: np.ndarray | None   # sorted positions among the kept items, or None for all of them
    n: int
    names: list[str]
    dropped: Counter

    def items(self) -> Iterator[Item]:
        kept = (it for it in self.listing.items() if it.label_name not in self.drop)
        if self.keep is None:
            yield from kept
            return
        wanted = iter(self.keep.tolist())
        target = next(wanted, None)
        for i, it in enumerate(kept):
            if i == target:
                yield it
                if (target := next(wanted, None)) is None:
                    return


def _select(cfg: DatasetConfig, seed: int, log: Callable[[str], None]) -> _Selection:
    """The source's items and label names, less `drop_categories`, subsampled to `max_images` (by `seed`)."""
    listing = get_source(cfg.source).read(cfg)
    drop = frozenset(cfg.drop_categories)
    dropped = Counter({k: v for k, v in listing.counts.items() if k in drop})
    if dropped:
        log(f"ingest: dropped by drop_categories: {dict(dropped)}")
    n, keep = sum(listing.counts.values()) - sum(dropped.values()), None
    if cfg.max_images is not None and cfg.max_images < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, cfg.max_images, replace=False))
        n = cfg.max_images
    return _Selection(listing, drop, keep, n, [k for k in listing.names if k not in drop], dropped)


def _chunks(items: Iterable[Item]) -> Iterator[list[Item]]:
    items = iter(items)
    while chunk := list(islice(items, CHUNK)):
        yield chunk


class _Manifest:
    """The manifest, written ROW_GROUP rows at a time as the shards fill (the stage's memory holds no column of N
    rows), and the counts the stage's summary reports.

    A row waits as Python objects only until ROW_BATCH have come (~0.4 kB each: the hash, name and key strings), then
    as Arrow columns (~0.14 kB) until its row group is written: 8,192 rows held as objects grew the images stage
    13 MiB between 2,000 and 16,000 images at 256 px, the one part of it that moved with N."""

    def __init__(self, path: Path, names: list[str], source: str):
        self.schema = MANIFEST_SCHEMA.with_metadata({"label_names": json.dumps(names), "source": source})
        self.writer = pq.ParquetWriter(path, self.schema)
        self.rows: dict[str, list] = {k: [] for k in MANIFEST_SCHEMA.names}
        self.batches: list[pa.RecordBatch] = []
        self.num_rows, self.num_holdout = 0, 0
        self.label_counts: Counter = Counter()
        self.shards: list[str] = []

    def append(self, *row) -> None:
        for k, v in zip(MANIFEST_SCHEMA.names, row):
            self.rows[k].append(v)
        _, _, label_name, _, _, split, shard = row
        self.num_rows += 1
        self.num_holdout += split == "holdout"
        self.label_counts[label_name] += 1
        if not self.shards or self.shards[-1] != shard:
            self.shards.append(shard)
        if len(self.rows["id"]) == ROW_BATCH or self.num_rows % ROW_GROUP == 0:
            self._to_arrow()
        if self.num_rows % ROW_GROUP == 0:
            self.flush()

    def _to_arrow(self) -> None:
        # From the C heap (tens of kB a batch), not Arrow's default pool: mimalloc keeps what it got for the
        # first batch (~5 MiB here), a step in the stage's peak between N below ROW_BATCH and N above it.
        if self.rows["id"]:
            pool = pa.system_memory_pool()
            columns = [pa.array(self.rows[f.name], f.type, memory_pool=pool) for f in MANIFEST_SCHEMA]
            self.batches.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
            self.rows = {k: [] for k in MANIFEST_SCHEMA.names}

    def flush(self) -> None:
        self._to_arrow()
        if self.batches:  # one row group, laid out as one chunk per column: the bytes of one from_pydict table
            self.writer.write_table(pa.Table.from_batches(self.batches).combine_chunks(pa.system_memory_pool()))
            self.batches = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _write_shards(cfg: DatasetConfig, selection: _Selection, out_dir: Path, workers: int,
                  log: Callable[[str], None]) -> tuple[_Manifest, list[str], int]:
    """Every readable item into the shards and the manifest, in the items' order; (the manifest, the skipped, the
    number of items tried)."""
    skipped: list[str] = []
    tried = 0
    label_id = {n: i for i, n in enumerate(selection.names)}
    work = partial(prepare_chunk, resolution=cfg.resolution, source_size=cfg.source_size)
    manifest = _Manifest(out_dir / MANIFEST, selection.names, cfg.source)
    in_flight: deque[list[Item]] = deque()  # the chunks submitted and not yet written: at most AHEAD x workers

    def tasks() -> Iterator[list[Task]]:
        for chunk in _chunks(selection.items()):
            in_flight.append(chunk)
            yield [(it.data, it.label_name in label_id) for it in chunk]

    # closing(): the workers are gone when this returns or raises, not whenever the generator is collected.
    with closing(map_in_order(work, tasks(), workers)) as done, closing(manifest), \
            wds.ShardWriter(str(out_dir / "shards" / SHARD_PATTERN), maxcount=cfg.shard_size, verbose=0,
                            mtime=SHARD_MTIME) as sink, \
            tqdm(total=selection.n, desc=f"ingest {cfg.source}", unit="img", mininterval=5) as bar:
        for results in done:
            for it, result in zip(in_flight.popleft(), results, strict=True):
                tried += 1
                bar.update()
                if isinstance(result, str):
                    skipped.append(f"{it.name}: {result}")
                    log(f"ingest: skipped {skipped[-1]}")
                    continue
                members, content_hash = result
                split = "holdout" if _is_holdout(content_hash, cfg.holdout_fraction) else "train"
                key = f"{manifest.num_rows:07d}"
                sink.write({"__key__": key, **members, "cls": label_id[it.label_name],
                            "json": {"source": it.name, "split": split}})
                manifest.append(key, label_id[it.label_name], it.label_name, it.name, content_hash, split,
                                os.path.basename(sink.fname))
    return manifest, skipped, tried


def ingest(cfg: DatasetConfig, out_dir: Path, seed: int = 0, log: Callable[[str], None] = print,
           workers: int = 1) -> dict:
    """Write out_dir/shards/images-*.tar and out_dir/manifest.parquet; return summary metadata. The images are
    prepared in `workers` processes; the output is the same bytes for any number of them."""
    out_dir = Path(out_dir)
    origin = str(cfg.path) if cfg.path is not None else cfg.source
    selection = _select(cfg, seed, log)
    names, dropped = selection.names, selection.dropped
    workers = max(1, min(workers, -(-selection.n // CHUNK)))  # no more workers than chunks

    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with large_blocks_returned(IMAGE_BLOCKS):  # set before the workers fork: they inherit it
        manifest, skipped, tried = _write_shards(cfg, selection, out_dir, workers, log)
    seconds = time.perf_counter() - start

    n, num_holdout, shards = manifest.num_rows, manifest.num_holdout, manifest.shards
    if n == 0:
        raise ValueError(f"no readable image in {origin} ({cfg.source}): tried {tried} files"
                         + (f"; first failure: {skipped[0]}" if skipped else ""))
    rate = tried / max(seconds, 1e-9)
    log(f"ingest: {n} images from {origin} ({n - num_holdout} train, {num_holdout} holdout) in {len(shards)} "
        f"shards; {len(skipped)} skipped; {seconds:.1f} s, {rate:.0f} images/s on {workers} worker(s)")
    return {
        "num_images": n, "num_train": n - num_holdout, "num_holdout": num_holdout,
        "num_skipped": len(skipped), "skipped": skipped, "num_dropped": sum(dropped.values()),
        "label_counts": {name: manifest.label_counts.get(name, 0) for name in names}, "label_names": names,
        "shards": shards, "source": cfg.source,
        "pngs_per_image": 1 if cfg.resolution == cfg.source_size else 2,
        "ingest_workers": workers, "images_per_second": round(rate, 1),
    }


# ---------------------------------------------------------------- readers

def level0_png(sample: Mapping) -> bytes:
    """The level-0 image (dataset.resolution) of an images-shard sample, or the column of a batch of samples."""
    return sample[LEVEL0_PNG]


def source_png(sample: Mapping) -> bytes:
    """The encoder's image (dataset.source_size) of an images-shard sample, or the column of a batch of samples:
    `src.png`, or `img.png` where ingest stored one copy because the two sizes are equal (artifacts written
    before that hold both, and read as they did)."""
    return sample[SOURCE_PNG] if SOURCE_PNG in sample else sample[LEVEL0_PNG]


def read_manifest(images_dir: Path, columns: list[str] | None = None, split: str | None = None) -> pa.Table:
    """The manifest (`columns` of it, the rows of one `split`): rows in shard order."""
    return pq.read_table(Path(images_dir) / MANIFEST, columns=columns,
                         filters=[("split", "==", split)] if split else None)


def label_names(images_dir: Path) -> list[str]:
    return json.loads(pq.read_schema(Path(images_dir) / MANIFEST).metadata[b"label_names"])


def image_shards(images_dir: Path) -> list[str]:
    return [str(p.resolve()) for p in listed_files(images_dir, "shards/images-*.tar")]
