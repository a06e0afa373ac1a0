"""Encoder loading and feature extraction (CPU, a few seconds)."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from models.encoder import (
    PACKAGED_WEIGHTS,
    checkpoint_sha256,
    feature_extractor,
    load_encoder,
    probe_features,
    resolve_weights,
)

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0():
    return load_encoder(LITE0, PACKAGED_WEIGHTS)


def _imagenet_batch(*images: np.ndarray, size: int = 224) -> torch.Tensor:
    """Short side to `size`, center crop, mean = std = 0.5 as the Lite models were trained."""
    out = []
    for img in images:
        im = Image.fromarray(img)
        scale = size / min(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255)
    return (torch.stack(out) - 0.5) / 0.5


def test_packaged_weights_classify_imagenet_images(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    x = _imagenet_batch(skimage_data.chelsea(), skimage_data.coffee())
    with torch.no_grad():
        top1 = lite0(x).argmax(dim=1).tolist()
    assert top1[0] in {281, 282, 285}  # tabby / tiger cat / Egyptian cat
    assert top1[1] == 967  # espresso
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())


def test_efficientnet_features_shapes_and_values(lite0):
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        feats = feature_extractor(lite0, "bn2")(x)
        reference = lite0.forward_features(x).permute(0, 2, 3, 1)
    assert feats.shape == (2, 4, 4, 1280) and feats.dtype == torch.float32
    assert torch.allclose(feats, reference, atol=1e-5)
    with torch.no_grad():
        mid = feature_extractor(lite0, "blocks.4")(torch.randn(2, 3, 64, 64))
    assert mid.shape == (2, 4, 4, 112)


def test_probe_matches_real_extractor(lite0):
    assert probe_features(LITE0, "bn2", 128) == (4, 4, 1280)
    assert probe_features(LITE0, "blocks.4", 64) == (4, 4, 112)
    with torch.no_grad():
        real = feature_extractor(lite0, "blocks.2")(torch.randn(1, 3, 96, 96))
    assert probe_features(LITE0, "blocks.2", 96) == tuple(real.shape[1:])


def test_vit_tokens_fold_into_grid():
    vit = load_encoder("vit_tiny_patch16_224", "none")
    with torch.no_grad():
        feats = feature_extractor(vit, "norm")(torch.randn(2, 3, 224, 224))
    assert feats.shape == (2, 14, 14, 192)
    assert probe_features("vit_tiny_patch16_224", "blocks.11", 224) == (14, 14, 192)
    with pytest.raises(ValueError, match="at 64 px"):  # this ViT is built for 224 px only
        probe_features("vit_tiny_patch16_224", "norm", 64)


def test_unknown_model_and_layer_are_named():
    with pytest.raises(ValueError, match="not_a_model"):
        load_encoder("not_a_model", "none")
    with pytest.raises(ValueError, match="not_a_model"):
        probe_features("not_a_model", "bn2", 64)
    with pytest.raises(ValueError, match=r"no_such_layer.*blocks\.0"):
        probe_features(LITE0, "no_such_layer", 64)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="broken.pth is not a readable checkpoint"):
        load_encoder(LITE0, str(bad))
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_encoder(LITE0, str(bad_st))


def test_missing_key_is_named(tmp_path):
    sd = torch.load(resolve_weights(PACKAGED_WEIGHTS), weights_only=True)
    del sd["_conv_head.weight"]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": sd}, path)  # also exercises the "state_dict" unwrapping
    with pytest.raises(ValueError, match=r"partial\.pth.*conv_head\.weight"):
        load_encoder(LITE0, str(path))


def test_timm_format_and_safetensors_roundtrip(tmp_path, lite0):
    from safetensors.torch import save_file

    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.state_dict().items()}, str(path))
    again = load_encoder(LITE0, str(path))
    assert torch.equal(again.conv_head.weight, lite0.conv_head.weight)


def test_moco_v3_layout_loads_backbone(tmp_path):
    vit = load_encoder("vit_tiny_patch16_224", "none")
    sd = {f"module.base_encoder.{k}": v for k, v in vit.state_dict().items()}
    sd |= {"module.base_encoder.head.0.weight": torch.zeros(8, 192),  # MoCo projector, dropped
           "module.momentum_encoder.norm.weight": torch.zeros(192)}  # momentum copy, dropped
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 1, "arch": "vit_tiny", "state_dict": sd}, path)
    loaded = load_encoder("vit_tiny_patch16_224", str(path))
    assert torch.equal(loaded.pos_embed, vit.pos_embed)
    assert isinstance(loaded.get_classifier(), torch.nn.Identity)


def test_missing_path_and_sha256(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_encoder(LITE0, str(tmp_path / "nowhere.pth"))
    assert resolve_weights("none") is None and checkpoint_sha256("hub") is None
    path = resolve_weights(PACKAGED_WEIGHTS)
    assert path.name == "efficientnet-lite0-57934424.pth"
    digest = checkpoint_sha256(PACKAGED_WEIGHTS)
    assert digest == checkpoint_sha256(PACKAGED_WEIGHTS) == hashlib.sha256(path.read_bytes()).hexdigest()
