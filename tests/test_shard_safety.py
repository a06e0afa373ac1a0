"""Reading latent shards never runs code planted in them: no default webdataset decoders, no pickles."""
from __future__ import annotations

import io
import pathlib
import pickle

import numpy as np
import pytest
import torch
import webdataset as wds

from pipeline.checks import latents_are_standardized
from pipeline.data import iter_latents
from pipeline.levels import iter_latent_samples, read_latents


class _Planted:
    """Unpickling this touches `marker`: what a planted member would do instead (os.system, ...)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _write_shards(root: pathlib.Path, marker: pathlib.Path, n: int = 40):
    """train/holdout shards of standardized latents, each sample also carrying a .pyd and a .pth that touch `marker`."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 3, 2, 2)).astype(np.float32)
    z = (z - z.mean((0, 2, 3), keepdims=True)) / z.std((0, 2, 3), keepdims=True)  # passes the standardized check
    keys = [f"{i:07d}" for i in range(n)]
    labels = [i % 4 for i in range(n)]
    for split in ("train", "holdout"):
        with wds.TarWriter(str(root / f"{split}-000000.tar")) as w:
            for k, zi, y in zip(keys, z, labels):
                w.write({"__key__": k, "latent.npy": zi, "cls": y,
                         "evil.pyd": pickle.dumps(_Planted(marker)), "evil.pth": _torch_bytes(_Planted(marker))})
    return keys, z, labels


@pytest.fixture()
def planted(tmp_path):
    marker = tmp_path / "pwned"
    root = tmp_path / "latents"
    root.mkdir()
    keys, z, labels = _write_shards(root, marker)
    sample = next(iter(wds.WebDataset([str(root / "train-000000.tar")], shardshuffle=False, empty_check=False)))
    assert set(sample) >= {"evil.pyd", "evil.pth", "latent.npy", "cls"}  # the planted members are in the shard
    assert not marker.exists()
    return root, marker, keys, z, labels


def test_planted_members_are_live(tmp_path):
    # Guards the test itself: the planted payload does run when unpickled, so "no marker" below means "not unpickled".
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(_Planted(marker)))
    assert marker.exists()


def test_iter_latents_ignores_planted_members(planted):
    root, marker, keys, z, labels = planted
    got = list(iter_latents(root, "train"))
    assert not marker.exists()
    assert [k for k, _, _ in got] == keys
    assert [y for _, _, y in got] == labels and all(type(y) is int for _, _, y in got)
    np.testing.assert_array_equal(np.stack([x for _, x, _ in got]), z)
    assert all(x.dtype == np.float32 for _, x, _ in got)


def test_read_latents_ignores_planted_members(planted):
    root, marker, keys, z, labels = planted
    for split in ("train", "holdout"):
        k, x, y = read_latents(root, split)
        assert k == keys
        np.testing.assert_array_equal(x, z)
        assert y.tolist() == labels
    assert not marker.exists()


def test_standardized_check_ignores_planted_members(planted):
    root, marker, *_ = planted
    outcome = latents_are_standardized(root)
    assert not marker.exists()
    assert outcome.passed, outcome.description


def test_object_latent_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    root = tmp_path / "latents"
    root.mkdir()
    buf = io.BytesIO()
    np.save(buf, np.array([_Planted(marker)], dtype=object), allow_pickle=True)  # a pickled .npy
    with wds.TarWriter(str(root / "train-000000.tar")) as w:
        w.write({"__key__": "0000000", "latent.npy": buf.getvalue(), "cls": 0})
    with pytest.raises(ValueError, match="latent.npy"):
        list(iter_latent_samples(root, "train"))
    with pytest.raises(ValueError):
        list(iter_latents(root, "train"))
    with pytest.raises(ValueError):
        read_latents(root, "train")
    outcome = latents_are_standardized(root)  # a failed check, not an executed payload
    assert not outcome.passed
    assert not marker.exists()


def test_empty_split_reads_as_empty(tmp_path):
    assert list(iter_latents(tmp_path, "holdout")) == []
    keys, z, y = read_latents(tmp_path, "holdout")
    assert keys == [] and len(z) == 0 and len(y) == 0


def test_a_latent_of_another_shape_is_refused_naming_its_shard_and_key(tmp_path):
    from pipeline.levels import write_shards

    rng = np.random.default_rng(0)
    samples = [("train", f"{i:07d}", rng.standard_normal((3, 2, 2)).astype(np.float32), 0) for i in range(5)]
    samples[3] = ("train", "0000003", rng.standard_normal((3, 4, 4)).astype(np.float32), 0)  # a valid .npy, wrong shape
    write_shards(tmp_path, samples, shard_size=2)
    with pytest.raises(ValueError, match=r"train-000001\.tar: sample '0000003': latent\.npy has shape \(3, 4, 4\); "
                                         r"the split's latents are \(c, s, s\) = \(3, 2, 2\)"):
        read_latents(tmp_path, "train")
