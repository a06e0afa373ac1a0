"""The registries: every registered backbone at every registered size, every registered dataset source, and the
refusal of a name nobody registered (naming the valid ones)."""
import pytest
import torch

from models.denoiser import BACKBONES, build_denoiser, input_shape
from pipeline.config import ConfigError, parse_config
from pipeline.schema import DatasetConfig
from pipeline.sources import SOURCES

IN_SHAPE, COND_SHAPES = (4, 8, 8), [(4, 4, 4)]  # tiny: 8 x 8 is divisible by every UNet size's downsampling
BACKBONE_SIZES = [(name, size) for name, backbone in BACKBONES.items() for size in backbone.sizes]


@pytest.mark.parametrize("backbone,size", BACKBONE_SIZES)
def test_every_registered_backbone_size_builds_and_keeps_the_shape(backbone, size):
    device = "cpu" if size == "tiny" else "meta"  # the big ones: shapes only, nothing allocated
    with torch.device(device):
        model = build_denoiser(backbone, size, IN_SHAPE, COND_SHAPES, num_classes=3)
        x, t = torch.randn(2, *input_shape(model, IN_SHAPE)), torch.tensor([1, 500])
        out = model(x, t, [torch.randn(2, *COND_SHAPES[0])], torch.tensor([0, 3]))
    assert out.shape == x.shape


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_registered_source_is_a_valid_config_value(source, tmp_path):
    path = tmp_path if source == "folder" else tmp_path / "data.bin"
    cfg = DatasetConfig(source=source, path=path if SOURCES[source].needs_path else None)
    assert cfg.source == source


def test_unknown_names_are_refused_with_the_registered_ones(tiny_cfg):
    data = tiny_cfg.model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"dataset\.source: unknown dataset source 'imagenet21k'; choose one of "
                                          r"\['digits', 'emoji', 'folder', 'mnist', 'npz'\]"):
        parse_config({**data, "dataset": {**data["dataset"], "source": "imagenet21k"}})
    data["level0"]["train"]["backbone"] = "dit"
    with pytest.raises(ConfigError, match=r"level0\.train\.backbone: unknown backbone 'dit'; choose one of "
                                          r"\['matryoshka', 'unet', 'uvit'\]"):
        parse_config(data)


def test_every_stage_kind_has_one_declaration_per_layer(tiny_cfg, tmp_path):
    """pipeline/stages.py declares each kind once (settings, code version, build, checks), assets/views.py its View;
    the plan holds exactly the stages they declare, each under its kind's folder."""
    from assets.views import VIEWS
    from pipeline.config import parse_config
    from pipeline.plan import build_plan
    from pipeline.stages import KINDS, STAGE_KINDS

    assert len(KINDS) == len(STAGE_KINDS) and set(KINDS) == set(VIEWS)
    vae = tiny_cfg.model_dump(mode="json")
    vae["level0"].update(space="vae", vae="stabilityai/sd-vae-ft-ema")  # a VAE level 0 adds its latents' kind
    seen = set()
    for cfg in (tiny_cfg, parse_config(vae)):
        plan = build_plan(cfg, tmp_path)
        declared = [asset for kind in STAGE_KINDS for asset, _ in kind.stages(cfg)]
        assert list(plan) == declared
        seen |= {st.kind for st in plan.values()}
        for st in plan.values():
            assert st.path.parent.name == st.kind and all(name in plan for name in st.inputs)
            assert list(plan).index(st.asset) > max((list(plan).index(n) for n in st.inputs), default=-1)  # upstream first
    assert seen == set(KINDS)
    assert all(len({c.name for c in kind.checks}) == len(kind.checks) for kind in STAGE_KINDS)


def test_every_level_kind_of_the_schema_is_registered():
    from typing import get_args

    from pipeline.level_kinds import LEVEL_KINDS, SPACES, TARGETS
    from pipeline.schema import Level0Config, LevelConfig

    assert set(LEVEL_KINDS) == set(get_args(LevelConfig.model_fields["kind"].annotation))
    assert set(SPACES) == set(get_args(Level0Config.model_fields["space"].annotation))
    assert len({t.key for t in TARGETS}) == len(TARGETS)
