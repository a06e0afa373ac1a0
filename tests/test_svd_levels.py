import math

import numpy as np
import pytest
import torch

from pipeline.levels import kl_capacity_bits, project
from pipeline.svd import fit_basis


def planted(n=4000, dim=24, rank=3, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, rank)))
    scales = np.array([5.0, 3.0, 2.0])[:rank]
    x = (rng.normal(size=(n, rank)) * scales) @ basis.T + noise * rng.normal(size=(n, dim)) + 7.0
    return x.astype(np.float32), basis, scales


def test_svd_recovers_planted_low_rank_structure():
    x, true_basis, scales = planted()
    # streamed: blocks shaped like (B, h, w, C) feature maps
    blocks = (x[i:i + 400].reshape(100, 2, 2, -1) for i in range(0, len(x), 400))
    b = fit_basis(blocks, x.shape[1])
    top = b["components"][:3].T.astype(np.float64)
    # principal angles between the fitted and planted subspaces are ~0
    cosines = np.linalg.svd(top.T @ true_basis, compute_uv=False)
    assert cosines.min() > 0.999
    assert b["explained_variance_ratio"][:3].sum() > 0.999
    np.testing.assert_allclose(np.sqrt(b["explained_variance"][:3]), scales, rtol=0.05)
    np.testing.assert_allclose(b["mean"], x.mean(0), atol=1e-3)
    assert np.all(np.diff(b["singular_values"]) <= 1e-6)
    # agrees with a dense SVD of the centered matrix
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(b["singular_values"][:3], s[:3], rtol=1e-3)


def test_basis_is_orthonormal_and_sign_stable():
    x, _, _ = planted(dim=10)
    b1 = fit_basis([x.reshape(-1, 1, 1, 10)], 10)
    b2 = fit_basis([x[::-1].copy().reshape(-1, 1, 1, 10)], 10)
    np.testing.assert_allclose(b1["components"] @ b1["components"].T, np.eye(10), atol=1e-5)
    np.testing.assert_allclose(b1["components"][:3], b2["components"][:3], atol=1e-4)


def test_project_pools_then_projects():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(3, 4, 4, 6)).astype(np.float32)
    comps = np.linalg.qr(rng.normal(size=(6, 6)))[0].T.astype(np.float32)
    basis = {"mean": feats.mean((0, 1, 2)), "components": comps}
    z = project(feats, basis, pool=2, channels=4).numpy()
    pooled = feats.reshape(3, 2, 2, 2, 2, 6).mean((2, 4))  # 2x2 average pooling
    expect = np.einsum("bhwc,kc->bkhw", pooled - basis["mean"], comps[:4])
    assert z.shape == (3, 4, 2, 2)
    np.testing.assert_allclose(z, expect, atol=1e-5)


def test_kl_capacity_known_cases():
    # sigma = 1 on standardized latents: KL per dim = (1 + 1 - 1 - 0) / 2 = 0.5 nats
    assert kl_capacity_bits(np.ones(16), 1.0, positions=4) == pytest.approx(64 * 0.5 / math.log(2))
    # sigma = 0.5, E[z^2] = 1: (0.25 + 1 - 1 - ln 0.25) / 2 nats per dim, one dim
    assert kl_capacity_bits(np.ones(1), 0.5, 1) == pytest.approx((0.25 - math.log(0.25)) / 2 / math.log(2))
    assert kl_capacity_bits(np.ones(8), 0.0, 4) == math.inf
    # more noise leaves less capacity
    caps = [kl_capacity_bits(np.ones(8), s, 4) for s in (0.25, 0.5, 1.0)]
    assert caps[0] > caps[1] > caps[2]


def test_features_match_a_plain_forward_whatever_the_chunking(tiny_run, tmp_path):
    import torch
    import zarr

    from pipeline.features import FEATURES, Preprocess, build_extractor, extract_features, image_batches
    from pipeline.plan import build_plan

    cfg = tiny_run["cfg"].encoder.model_copy(update={"batch_size": 48})
    images = build_plan(tiny_run["cfg"], tiny_run["home"])["images"].path
    extract_features(cfg, images, tmp_path, chunk_rows=100, log=lambda _: None)  # batches straddle chunks
    got = zarr.open_array(str(tmp_path / FEATURES), mode="r")
    extractor, pre = build_extractor(cfg), Preprocess(cfg)
    with torch.inference_mode():
        want = np.concatenate([extractor(pre(torch.from_numpy(b))).numpy() for _, b in image_batches(images, 48)])
    assert got.chunks[0] == 100 and got.shape == want.shape
    np.testing.assert_allclose(got[:], want, rtol=1e-5, atol=1e-5)
