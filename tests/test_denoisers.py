"""Per-level denoisers: every registered size builds and runs, conditions and CFG dropout work, tiny ones learn."""

import pytest
import torch

from models.denoiser import BACKBONES, build_denoiser, count_params, gflops_per_step, input_shape

PIXEL = (3, 32, 32)
COND2 = [(32, 4, 4), (16, 2, 2)]  # non-Markov: all coarser levels
COND1 = [(32, 4, 4)]  # Markov: only the next level
LATENT, LATENT_COND = (32, 4, 4), [(16, 2, 2)]
CASES = [(PIXEL, COND2), (PIXEL, COND1), (PIXEL, []), (LATENT, LATENT_COND)]
ALL_SIZES = [(name, size) for name, backbone in BACKBONES.items() for size in backbone.sizes]


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
                    # Only a UNet too deep for the 4x4 latent (or for a matryoshka's inner 2x2) may refuse it.
                    assert backbone in ("unet", "matryoshka") and in_shape == LATENT and size != "tiny"
                    continue
            x, t, conds = inputs(input_shape(model, in_shape), cond_shapes, device=device)
            labels = torch.tensor([3, num_classes], device=device) if num_classes else None
            drop = torch.tensor([False, True], device=device)
            out = model(x, t, conds, labels=labels, cond_drop=drop)
            assert out.shape == x.shape
            if device == "cpu":
                assert torch.isfinite(out).all()
                assert model(x, t[0], conds).shape == x.shape  # a scalar t broadcasts


@pytest.mark.parametrize("backbone", ["uvit", "unet", "matryoshka"])
def test_cond_drop(backbone):
    torch.manual_seed(0)
    model = build_denoiser(backbone, "tiny", PIXEL, COND2, num_classes=10).eval()
    x, t, conds = inputs(input_shape(model, PIXEL), COND2, batch=3)
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
        grads = [p.grad for p in [*model.cond_proj.parameters(), *model.fusions.parameters()]]
    else:
        w, c = model.unet.conv_in.weight.grad, PIXEL[0]
        grads = [w[:, c:c + 32], w[:, c + 32:c + 48], w[:, -1:]]  # both conditions and the indicator
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backbone", ["uvit", "unet", "matryoshka"])
def test_tiny_model_overfits_one_batch(backbone):
    torch.manual_seed(0)
    in_shape, cond_shapes = (4, 8, 8), [(8, 4, 4)]
    model = build_denoiser(backbone, "tiny", in_shape, cond_shapes)
    x0, t, conds = inputs(input_shape(model, in_shape), cond_shapes, batch=8)
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
    assert 0 < flops[0] < flops[1] < flops[2]  # conditions add the fusions, and each its upsampler
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


@pytest.mark.parametrize("num_classes", [0, 10])
def test_uvit_conditions_do_not_add_tokens(num_classes):
    model = build_denoiser("uvit", "tiny", PIXEL, COND2, num_classes=num_classes)
    lengths = []
    blocks = [*model.in_blocks, model.mid_block, *model.out_blocks]
    hooks = [b.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1])) for b in blocks]
    x, t, conds = inputs(PIXEL, COND2)
    with torch.no_grad():
        model(x, t, conds, cond_drop=torch.tensor([False, True]))
    for h in hooks:
        h.remove()
    num_patches = model.grid[0] * model.grid[1]
    assert lengths == [1 + (num_classes > 0) + num_patches] * len(blocks)
    # One fusion before every second block (0, 2, 4 of the tiny model's 5).
    assert len(model.fusions) == (len(blocks) + 1) // 2 == 3


def test_uvit_without_conditions_is_plain():
    model = build_denoiser("uvit", "tiny", PIXEL, [])
    assert len(model.fusions) == len(model.cond_proj) == 0 and model.cond_null is None
    assert not [n for n, _ in model.named_parameters() if "cond" in n or "fusion" in n]
    x, t, _ = inputs(PIXEL, [])
    with torch.no_grad():  # cond_drop is meaningless without conditions, and ignored
        assert torch.equal(model(x, t), model(x, t, cond_drop=torch.tensor([True, True])))


def test_uvit_s_condition_cost_is_small():
    in_shape, cond_shapes = (4, 32, 32), [(32, 6, 6), (24, 4, 4), (16, 2, 2)]
    gflops = []
    for conds in ([], cond_shapes):
        with torch.device("meta"):
            model = build_denoiser("uvit", "S", in_shape, conds, patch_size=2)
        gflops.append(gflops_per_step(model, in_shape, conds))
    assert gflops[0] > 20  # the 16x16-token U-ViT-S really was counted (attention included)
    assert gflops[1] / gflops[0] <= 1.3, gflops


def test_uvit_condition_changes_output_unless_dropped():
    torch.manual_seed(0)
    model = build_denoiser("uvit", "tiny", PIXEL, COND2).eval()
    x, t, conds = inputs(PIXEL, COND2)
    _, _, other = inputs(PIXEL, COND2, seed=1)
    drop = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        assert (model(x, t, conds) - model(x, t, other)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        for k in range(len(COND2)):  # every level is seen, not just the sum's largest term
            one = [other[j] if j == k else z for j, z in enumerate(conds)]
            assert not torch.allclose(model(x, t, conds), model(x, t, one))
        assert torch.equal(model(x, t, conds, cond_drop=drop), model(x, t, other, cond_drop=drop))


def test_uvit_nan_in_dropped_conditions_stays_out():
    torch.manual_seed(0)
    model = build_denoiser("uvit", "tiny", PIXEL, COND2)
    x, t, conds = inputs(PIXEL, COND2)
    for z in conds:
        z[1] = float("nan")
    out = model(x, t, conds, cond_drop=torch.tensor([False, True]))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_uvit_upsamplers_for_integer_and_other_ratios():
    torch.manual_seed(0)
    cond_shapes = [(8, 4, 4), (8, 6, 6), (8, 16, 16)]  # 8x8 grid: deconv x2, resize up, resize down
    model = build_denoiser("uvit", "tiny", PIXEL, cond_shapes, patch_size=4).eval()
    assert model.grid == (8, 8)
    deconv, up, down = model.cond_proj
    assert isinstance(deconv, torch.nn.ConvTranspose2d) and deconv.stride == (2, 2)
    assert isinstance(up[-1], torch.nn.Conv2d) and isinstance(down[-1], torch.nn.Conv2d)
    same = build_denoiser("uvit", "tiny", (3, 8, 8), [(8, 8, 8)], patch_size=1).cond_proj[0]
    assert isinstance(same, torch.nn.ConvTranspose2d) and same.kernel_size == (1, 1)
    x, t, conds = inputs(PIXEL, cond_shapes)
    with torch.no_grad():
        for proj, z in zip(model.cond_proj, conds):
            assert proj(z).shape == (2, model.dim, 8, 8)
        base = model(x, t, conds)
        for k in range(len(cond_shapes)):
            changed = [z + 1 if j == k else z for j, z in enumerate(conds)]
            assert not torch.allclose(base, model(x, t, changed))



def test_matryoshka_state_holds_every_resolution_and_each_is_predicted():
    from models.matryoshka import pack, unpack

    torch.manual_seed(0)
    images = torch.randn(2, *PIXEL)
    state = pack(images, 3)
    assert state.shape == (2, 3, 32, 32 + 8 + 2)
    fine, mid, coarse = unpack(state, 3)
    assert torch.equal(fine, images)
    torch.testing.assert_close(mid, torch.nn.functional.avg_pool2d(images, 2))
    torch.testing.assert_close(coarse, torch.nn.functional.avg_pool2d(images, 4))
    from models.matryoshka import NestedUNet

    model = NestedUNet(PIXEL, COND1, nest=3).eval()  # the registered sizes nest 2; three shows the nesting
    x, t, conds = inputs(input_shape(model, PIXEL), COND1)
    with torch.no_grad():
        base = unpack(model(x, t, conds), 3)
        # the coarse input reaches every finer prediction (nested inside out); a finer input not the coarser ones
        parts = unpack(x, 3)
        bumped = unpack(model(torch.cat([p.reshape(2, 3, 32, -1) for p in parts[:2] + [parts[2] + 1]], -1), t,
                              conds), 3)
        assert all(not torch.allclose(a, b) for a, b in zip(base, bumped))
        bumped = unpack(model(torch.cat([(parts[0] + 1).reshape(2, 3, 32, -1)] +
                                        [p.reshape(2, 3, 32, -1) for p in parts[1:]], -1), t, conds), 3)
        assert not torch.allclose(base[0], bumped[0])
        assert torch.equal(base[1], bumped[1]) and torch.equal(base[2], bumped[2])


def test_matryoshka_refuses_a_height_it_cannot_nest():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_denoiser("matryoshka", "tiny", (3, 6, 6))
