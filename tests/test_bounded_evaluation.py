"""The bounded reference and evaluation: streamed float64 mean and covariance, a capped deterministic subsample for
precision/recall, FID from the stored statistics, an ADM-style .npz reference, the device honoured.

The stage tests run the real reference stage on a small synthetic images artifact, with a cheap stand-in for the
Inception network of 64 features (the real one costs 0.2 s per image on a CPU and is tested in test_metrics.py; and
the matrix square root of a 2048-d FID takes a minute on one core)."""
from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds
from cleanfid.fid import fid_from_feats
from PIL import Image
from safetensors.numpy import load_file, save_file

import pipeline.evaluate as evaluate
from pipeline import checks, knn, metrics
from pipeline.config import ConfigError, parse_config
from pipeline.evaluate import REFERENCE, build_reference, evaluate_samples, featurized, keyed_pixels, summarize
from pipeline.fingerprints import config_fingerprint
from pipeline.plan import build_plan
from pipeline.stages import materialize
from pipeline.stats import FeatureMoments, HashedSubsample, key_rank

N_IMAGES, CAP, DIM = 120, 30, 64  # about 108 training and 12 held-out images: the cap bites on the training split


class StandIn(torch.nn.Module):
    """A fixed random map of (B, 3, 299, 299) images to DIM features, in place of the FID Inception."""
    dim = DIM

    def __init__(self):
        super().__init__()
        self.device = torch.device("cpu")
        self.pool = torch.nn.AdaptiveAvgPool2d(6)
        self.proj = torch.nn.Linear(3 * 36, DIM)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return torch.relu(self.proj(self.pool((x - 128) / 128).flatten(1)))


# -- the streamed statistics and the subsample, on synthetic features --------------------------------------------

def test_streamed_moments_equal_numpy():
    rng = np.random.default_rng(0)
    # A large mean against the spread, and uneven scales: the naive sum of x x^T loses digits here, Chan's update not.
    x = rng.standard_normal((1000, 32)) * np.linspace(0.1, 10, 32) + 1000.0
    x[:1] = x[:1].astype(np.float32)  # the first batch comes as float32 rows (Inception's)
    moments = FeatureMoments(32)
    for i, part in enumerate(np.split(x, [1, 2, 2, 65, 400, 999])):  # batches of 1, 1, 0, 63, ... rows
        moments.update(part.astype(np.float32) if i == 0 else part)
    assert moments.n == 1000
    np.testing.assert_allclose(moments.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    assert np.array_equal(moments.covariance(), moments.covariance().T)
    with pytest.raises(ValueError, match="2 rows"):
        FeatureMoments(4).covariance()


def _keyed(n, dim=8, seed=0):
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return [f"img{i:05d}" for i in range(n)], rows


def _subsample(keys, rows, cap, batch):
    kept = HashedSubsample(cap, rows.shape[1])
    for start in range(0, len(keys), batch):
        kept.update(keys[start:start + batch], rows[start:start + batch])
    return kept.result()


def test_subsample_is_deterministic_capped_and_uniform_by_key():
    keys, rows = _keyed(1000)
    got_keys, got_rows = _subsample(keys, rows, 100, batch=64)
    assert len(got_keys) == 100 and got_rows.shape == (100, 8)
    assert set(got_keys) == set(sorted(keys, key=key_rank)[:100])  # the keys that hash first
    assert got_keys == sorted(got_keys)  # in stream order
    np.testing.assert_array_equal(got_rows, rows[[keys.index(k) for k in got_keys]])
    # The same for any batching and any order of the stream; a larger cap keeps a superset.
    assert _subsample(keys, rows, 100, batch=1)[0] == got_keys
    order = np.random.default_rng(1).permutation(1000)
    shuffled = _subsample([keys[i] for i in order], rows[order], 100, batch=37)[0]
    assert set(shuffled) == set(got_keys)
    assert set(got_keys) <= set(_subsample(keys, rows, 300, batch=64)[0])
    # At most `cap` rows: the whole stream, as it came.
    whole_keys, whole_rows = _subsample(keys[:80], rows[:80], 100, batch=64)
    assert whole_keys == keys[:80]
    np.testing.assert_array_equal(whole_rows, rows[:80])


def test_fid_from_the_stored_statistics_equals_fid_from_the_features():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((600, 16)).astype(np.float32) + 3.0
    fake = (rng.standard_normal((200, 16)) * 1.3 + 3.2).astype(np.float32)
    summary = summarize([(keys, real[i:i + 64]) for i, keys in
                         ((i, [f"r{j}" for j in range(i, min(i + 64, 600))]) for i in range(0, 600, 64))],
                        cap=50, dim=16)
    stored = {"mu": summary.moments.mean(), "sigma": summary.moments.covariance()}
    fid = evaluate.fid_against(fake, stored)
    assert fid == pytest.approx(metrics.fid_from_features(fake, real.astype(np.float64)), rel=1e-9)
    # clean-fid averages float32 features in float32: the streamed float64 mean differs by that rounding alone.
    assert fid == pytest.approx(fid_from_feats(fake, real), rel=1e-6)
    assert len(summary.kept.result()[0]) == 50 and summary.kept.seen == 600


# -- the reference stage on a synthetic images artifact -----------------------------------------------------------

def _config(tmp, **sampling):
    return parse_config({"name": "bounded", "dataset": {"source": "npz", "path": str(tmp / "images.npz"),
                                                        "resolution": 16, "source_size": 16, "holdout_fraction": 0.1},
                         "sampling": {"pr_reference": CAP, **sampling}, "compute": {"device": "cpu"}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bounded")
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (N_IMAGES, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp / "images.npz", images=coarse.repeat(4, 1).repeat(4, 2), labels=np.zeros(N_IMAGES, int))
    cfg = _config(tmp)
    plan = build_plan(cfg, tmp / "home")
    materialize(cfg, plan, "images", log=lambda _: None)
    images = plan["images"].artifact.require()
    model = StandIn()
    every = {split: list(featurized(keyed_pixels(images, split), model)) for split in ("train", "holdout")}
    return {"tmp": tmp, "cfg": cfg, "plan": plan, "images": images, "model": model,
            "keys": {s: [k for keys, _ in b for k in keys] for s, b in every.items()},
            "feats": {s: np.concatenate([f for _, f in b]) for s, b in every.items()}}


@pytest.fixture
def stand_in(world, monkeypatch):
    monkeypatch.setattr(evaluate, "shared_inception", lambda path=None, device="cpu": world["model"])


def _build(world, cfg, name):
    out = world["tmp"] / name
    out.mkdir()
    lines = world.setdefault("log", {}).setdefault(name, [])
    return out, build_reference(cfg, world["plan"], out, log=lines.append)


@pytest.fixture(scope="module")
def reference(world):
    """The reference stage's artifact for the synthetic images (built once; tests damage copies of it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate, "shared_inception", lambda path=None, device="cpu": world["model"])
        return _build(world, world["cfg"], "reference")


def _copy(reference, tmp_path):
    shutil.copytree(reference[0], tmp_path / "reference")
    return tmp_path / "reference", reference[1]


def test_reference_streams_the_statistics_and_keeps_a_capped_subsample(world, reference, tmp_path):
    out, meta = _copy(reference, tmp_path)
    train, holdout = world["feats"]["train"], world["feats"]["holdout"]
    ref = load_file(str(out / REFERENCE))
    # mu and sigma describe every training image, though only CAP of their features are kept.
    np.testing.assert_allclose(ref["mu"], train.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ref["sigma"], np.cov(train, rowvar=False), rtol=1e-7, atol=1e-10)
    keys = world["keys"]["train"]
    first = sorted(keys, key=key_rank)[:CAP]
    np.testing.assert_array_equal(ref["train"], train[sorted(keys.index(k) for k in first)])
    np.testing.assert_array_equal(ref["holdout"], holdout)  # 30 <= CAP: all of them, in order
    np.testing.assert_allclose(ref["holdout_mu"], holdout.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ref["holdout_sigma"], np.cov(holdout, rowvar=False), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ref["holdout_nn"], metrics.nearest_neighbour_distances(holdout, ref["train"], "cpu"),
                               rtol=1e-6)
    assert meta["num_reference"] == meta["pr_source"] == len(train) > CAP and meta["num_pr_reference"] == CAP
    # a person waiting reads how far each split is (the last line of each: all of it)
    said = world["log"]["reference"]
    assert any(line.startswith(f"reference (training split): {len(train)}/{len(train)} images") for line in said)
    assert any(line.startswith(f"reference (held-out split): {len(holdout)}/{len(holdout)} images") for line in said)
    assert meta["num_holdout"] == meta["num_holdout_kept"] == len(holdout) < CAP
    assert meta["fid_floor"] == pytest.approx(metrics.fid_from_features(holdout, train), rel=1e-6)
    assert meta["device"] == "cpu" and meta["inception_precision"] == "float32"

    args = (meta["num_reference"], meta["num_holdout"], CAP, meta["pr_source"])
    check = functools.partial(checks.reference_is_consistent, dim=DIM)
    assert not checks.reference_is_consistent(out, *args).passed  # the real check wants 2048-d Inception features
    ok = check(out, *args)
    assert ok.passed, ok.description
    assert 0 < ok.metadata["mu_error"]  # a subsample's mean is near mu, not on it: within its standard error
    shifted = dict(ref, mu=ref["mu"] + np.sqrt(np.diag(ref["sigma"])))  # one std off: not these images' statistics
    save_file(shifted, str(out / REFERENCE))
    assert not check(out, *args).passed
    save_file(dict(ref, train=ref["train"][:-1]), str(out / REFERENCE))  # a kept row missing
    assert not check(out, *args).passed
    save_file(dict(ref, sigma=ref["sigma"] - 2 * np.eye(len(ref["sigma"]))), str(out / REFERENCE))  # not PSD
    bad = check(out, *args)
    assert not bad.passed and bad.metadata["sigma_min_eigenvalue"] < 0
    save_file(ref, str(out / REFERENCE))
    assert check(out, *args).passed and not check(out, *args[:2], CAP + 1, args[3]).passed  # min(cap, N) rows


def _samples(world, n=40):
    """A samples artifact's shards: the first n training images, brightened."""
    folder = world["tmp"] / "samples"
    if not folder.exists():
        folder.mkdir()
        with wds.ShardWriter(str(folder / "samples-%06d.tar"), maxcount=1000, verbose=0) as sink:
            for i, (_, image) in enumerate(keyed_pixels(world["images"], "train", n)):
                png = folder / "tmp.png"
                Image.fromarray(np.minimum(image.astype(int) + 40, 255).astype(np.uint8)).save(png)
                sink.write({"__key__": f"{i:06d}", "png": png.read_bytes()})
            png.unlink()
    return folder


def test_the_evaluation_scores_against_the_stored_statistics(world, reference, tmp_path):
    ref_dir, _ = _copy(reference, tmp_path)
    out = tmp_path / "evaluation"
    out.mkdir()
    got = evaluate_samples(_samples(world), ref_dir, out, model=world["model"], device="cpu")
    feats = np.load(out / "sample_features.npy")
    train = world["feats"]["train"]
    # The FID is against all 270 training images, which the artifact does not hold: it is the stored mu and sigma's.
    assert got["fid"] == pytest.approx(fid_from_feats(feats, train), rel=1e-6)
    kept = load_file(str(ref_dir / REFERENCE))["train"]
    assert got["fid"] != pytest.approx(fid_from_feats(feats, kept), rel=1e-3)
    pr = metrics.precision_recall(kept, feats, device="cpu")
    assert (got["precision"], got["recall"], got["pr_reference"]) == (pr["precision"], pr["recall"], CAP)
    assert got["device"] == "cpu" and got["inception_precision"] == "float32"
    # KID against the kept training features; the near-copy fraction against the held-out images' own distances.
    assert got["kid"] == metrics.kid(kept, feats)
    held = load_file(str(ref_dir / REFERENCE))["holdout"]
    assert len(held) and got["near_copy_quantile"] == metrics.NEAR_COPY_QUANTILE
    assert (got["near_copy_fraction"], got["near_copy_threshold"]) == metrics.near_copies(
        metrics.nearest_neighbour_distances(feats, kept, "cpu"), metrics.nearest_neighbour_distances(held, kept, "cpu"))
    # Against the held-out split as well: its streamed statistics, its kept features.
    assert got["fid_holdout"] == pytest.approx(fid_from_feats(feats, world["feats"]["holdout"]), rel=1e-6)
    assert got["kid_holdout"] == metrics.kid(held, feats) and got["fid_holdout"] != got["fid"]
    # Fewer kept features move precision/recall, never the FID.
    ref = load_file(str(ref_dir / REFERENCE))
    save_file(dict(ref, train=ref["train"][:10]), str(ref_dir / REFERENCE))
    again = evaluate_samples(_samples(world), ref_dir, out, model=world["model"], device="cpu")
    assert again["fid"] == got["fid"] and again["pr_reference"] == 10
    # A reference from before the held-out statistics were kept: the held-out figures are missing, not wrong.
    old = {k: v for k, v in ref.items() if not k.startswith("holdout")}
    save_file(old, str(ref_dir / REFERENCE))
    older = evaluate_samples(_samples(world), ref_dir, out, model=world["model"], device="cpu")
    assert older["fid"] == got["fid"] and older["fid_holdout"] is older["kid_holdout"] is None
    assert older["near_copy_fraction"] is None


@pytest.mark.parametrize("arr_0", ["activations", "images", None])
def test_reference_statistics_from_an_adm_npz(world, stand_in, arr_0):
    rng = np.random.default_rng(3)
    acts = rng.random((80, DIM)).astype(np.float32)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    npz = world["tmp"] / f"adm_{arr_0}.npz"
    extra = {"activations": {"arr_0": acts}, "images": {"arr_0": images}, None: {}}[arr_0]
    np.savez(npz, mu=acts.mean(0).astype(np.float64), sigma=np.cov(acts, rowvar=False), **extra)
    cfg = _config(world["tmp"], reference_npz=str(npz))
    out, meta = _build(world, cfg, f"reference_npz_{arr_0}")
    ref = load_file(str(out / REFERENCE))
    with np.load(npz) as f:
        np.testing.assert_array_equal(ref["mu"], f["mu"])
        np.testing.assert_array_equal(ref["sigma"], f["sigma"])
    if arr_0 == "activations":
        first = sorted(range(80), key=lambda i: key_rank(f"arr_0/{i}"))[:CAP]
        np.testing.assert_array_equal(ref["train"], acts[sorted(first)])
    elif arr_0 == "images":  # ADM's reference batches hold images: featurized by our network
        np.testing.assert_allclose(ref["train"], metrics.inception_features(images, model=world["model"]), rtol=1e-5)
    else:  # no arr_0: precision/recall against the training images' subsample
        assert meta["pr_source"] == len(world["feats"]["train"]) and len(ref["train"]) == CAP
    assert meta["num_reference"] is None and meta["statistics"] == f"npz {npz.name}"
    ok = checks.reference_is_consistent(out, meta["num_reference"], meta["num_holdout"], CAP, meta["pr_source"],
                                        dim=DIM)
    assert ok.passed, ok.description


def test_an_npz_without_statistics_is_refused(world, stand_in):
    npz = world["tmp"] / "no_stats.npz"
    np.savez(npz, arr_0=np.zeros((4, DIM), np.float32))
    with pytest.raises(ValueError, match="sampling.reference_npz: .* has no mu, sigma"):
        _build(world, _config(world["tmp"], reference_npz=str(npz)), "reference_refused")


# -- config, fingerprints, device -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling, field", [({"pr_reference": 3}, "sampling.pr_reference"),
                                             ({"pr_reference": 10**9}, "sampling.pr_reference"),
                                             ({"pr_reference": "many"}, "sampling.pr_reference"),
                                             ({"reference_npz": "/nonexistent/ref.npz"}, "sampling.reference_npz")])
def test_bad_values_are_refused_with_their_field(world, sampling, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        _config(world["tmp"], **sampling)


def test_what_enters_the_fingerprints(world):
    tmp = world["tmp"]
    base = build_plan(world["cfg"], tmp / "home")
    smaller = build_plan(_config(tmp, pr_reference=CAP - 1), tmp / "home")
    moved = {name for name in base if base[name].fingerprint != smaller[name].fingerprint}
    assert moved == {"reference_stats", "evaluation"}  # nothing is re-sampled or retrained
    # At their defaults the new fields leave a config's fingerprint (its rows' identity) as it was.
    default = _config(tmp, pr_reference=50_000)
    data = default.model_dump(mode="json", exclude={"variants"})
    del data["sampling"]["pr_reference"], data["sampling"]["reference_npz"]
    assert config_fingerprint(default) == config_fingerprint(parse_config(data))
    # An .npz enters by content: the same bytes elsewhere plan the same reference; one changed byte moves it.
    a, b = tmp / "ref_a.npz", tmp / "ref_b.npz"
    for path in (a, b):
        np.savez(path, mu=np.zeros(metrics.FEATURE_DIM), sigma=np.eye(metrics.FEATURE_DIM))
    plans = [build_plan(_config(tmp, reference_npz=str(p)), tmp / "home")["reference_stats"] for p in (a, b)]
    assert plans[0].fingerprint == plans[1].fingerprint != base["reference_stats"].fingerprint
    np.savez(b, mu=np.ones(metrics.FEATURE_DIM), sigma=np.eye(metrics.FEATURE_DIM))
    assert build_plan(_config(tmp, reference_npz=str(b)), tmp / "home")["reference_stats"].fingerprint != \
        plans[0].fingerprint


def test_faiss_honours_the_device(monkeypatch):
    monkeypatch.setattr(knn.faiss, "get_num_gpus", lambda: 1)  # a faiss that sees a GPU
    assert not knn.faiss_on_gpu("cpu") and not knn.faiss_on_gpu(torch.device("cpu"))
    assert knn.faiss_on_gpu(torch.device("cuda", 0))
    monkeypatch.setattr(knn.faiss, "get_num_gpus", lambda: 0)
    assert not knn.faiss_on_gpu(torch.device("cuda", 0))  # a CPU-only faiss build: its index stays on the CPU
