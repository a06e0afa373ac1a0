"""Per-level denoisers: every registered size builds and runs, conditions and CFG dropout work, tiny ones learn."""

import pytest
import torch

from models.denoiser import MODEL_SIZES, build_denoiser, count_params, gflops_per_step

PIXEL = (3, 32, 32)
COND2 = [(32, 4, 4), (16, 2, 2)]  # non-Markov: all coarser levels
COND1 = [(32, 4, 4)]  # Markov: only the next level
LATENT, LATENT_COND = (32, 4, 4), [(16, 2, 2)]
CASES = [(PIXEL, COND2), (PIXEL, COND1), (PIXEL, []), (LATENT, LATENT_COND)]
ALL_SIZES = [(bb, size) for bb, sizes in MODEL_SIZES.items() for size in sizes]


def inputs(in_shape, cond_shapes, batch=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *in_shape, generator=g).to(device)
    conds = [torch.randn(batch, *s, generator=g).to(device) for s in cond_shapes]
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    return x, t, conds


@pytest.mark.parametrize("backbone,size", ALL_SIZES)
def test_every_size_builds_and_keeps_shapes(backbone, size):
    # Only "tiny" computes real numbers; the rest run on the meta device (shapes only) to stay fast.
    device = "cpu" if size == "tiny" else "meta"
    for in_shape, cond_shapes in CASES:
        for num_classes in (0, 10):
            with torch.device(device):
                try:
                    model = build_denoiser(backbone, size, in_shape, cond_shapes, num_classes)
                except ValueError:
                    # Only a UNet too deep for the 4x4 latent may refuse it.
                    assert backbone == "unet" and in_shape == LATENT and size != "tiny"
                    continue
            x, t, conds = inputs(in_shape, cond_shapes, device=device)
            labels = torch.tensor([3, num_classes], device=device) if num_classes else None
            drop = torch.tensor([False, True], device=device)
            out = model(x, t, conds, labels=labels, cond_drop=drop)
            assert out.shape == x.shape
            if device == "cpu":
                assert torch.isfinite(out).all()
                assert model(x, t[0], conds).shape == x.shape  # a scalar t broadcasts


@pytest.mark.parametrize("backbone", ["uvit", "unet"])
def test_cond_drop(backbone):
    torch.manual_seed(0)
    model = build_denoiser(backbone, "tiny", PIXEL, COND2, num_classes=10).eval()
    x, t, conds = inputs(PIXEL, COND2, batch=3)
    _, _, other = inputs(PIXEL, COND2, batch=3, seed=1)
    labels = torch.tensor([1, 2, 10])
    keep, drop = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        kept = model(x, t, conds, labels, keep)
        assert torch.allclose(model(x, t, conds, labels), kept)  # cond_drop=None keeps everything
        dropped = model(x, t, conds, labels, drop)
        assert (kept - dropped).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        # Fully dropped: the condition values are invisible.
        assert torch.allclose(dropped, model(x, t, other, labels, drop), atol=1e-6)
        # Samples do not interact: a mixed batch gives each sample its own mode's output.
        mixed = model(x, t, conds, labels, torch.tensor([True, False, True]))
        assert torch.allclose(mixed[0], dropped[0], atol=1e-5) and torch.allclose(mixed[1], kept[1], atol=1e-5)
        # The label matters too (null label vs a class).
        assert not torch.allclose(kept, model(x, t, conds, torch.tensor([10, 10, 10]), keep))


@pytest.mark.parametrize("backbone", ["uvit", "unet"])
def test_gradients_reach_condition_projections(backbone):
    torch.manual_seed(0)
    model = build_denoiser(backbone, "tiny", PIXEL, COND2)
    x, t, conds = inputs(PIXEL, COND2)
    model(x, t, conds).square().mean().backward()
    if backbone == "uvit":
        grads = [proj.weight.grad for proj in model.cond_proj]
    else:
        w, c = model.unet.conv_in.weight.grad, PIXEL[0]
        grads = [w[:, c:c + 32], w[:, c + 32:c + 48], w[:, -1:]]  # both conditions and the indicator
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backbone", ["uvit", "unet"])
def test_tiny_model_overfits_one_batch(backbone):
    torch.manual_seed(0)
    in_shape, cond_shapes = (4, 8, 8), [(8, 4, 4)]
    model = build_denoiser(backbone, "tiny", in_shape, cond_shapes)
    x0, t, conds = inputs(in_shape, cond_shapes, batch=8)
    eps = torch.randn_like(x0)
    abar = torch.cos(t.float() / 1000 * torch.pi / 2)[:, None, None, None] ** 2
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = (model(xt, t, conds) - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-10:]) < losses[0] / 10, (losses[0], losses[-10:])


def test_params_and_gflops():
    flops = []
    for conds in ([], COND1, COND2):
        model = build_denoiser("uvit", "tiny", PIXEL, conds)
        flops.append(gflops_per_step(model, PIXEL, conds))
    assert 0 < flops[0] < flops[1] < flops[2]  # each condition adds a grid of tokens
    unet = build_denoiser("unet", "tiny", PIXEL, COND2, num_classes=10)
    assert gflops_per_step(unet, PIXEL, COND2, num_classes=10) > 0
    assert count_params(unet) == sum(p.numel() for p in unet.parameters()) > 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="uvit"):
        build_denoiser("resnet", "tiny", PIXEL)
    with pytest.raises(ValueError, match="small"):
        build_denoiser("uvit", "XXL", PIXEL)
    with pytest.raises(ValueError, match="tiny"):
        build_denoiser("unet", "S", PIXEL)
    with pytest.raises(ValueError, match="divisible"):
        build_denoiser("unet", "base", (3, 12, 12))
    with pytest.raises(ValueError, match="divisible"):
        build_denoiser("uvit", "tiny", PIXEL, patch_size=3)
    model = build_denoiser("uvit", "tiny", LATENT, LATENT_COND)
    x, t, _ = inputs(LATENT, [])
    with pytest.raises(ValueError, match="conditions"):
        model(x, t)
