"""Training stops at the first non-finite loss, naming the level and the step, and publishes nothing."""
import dataclasses

import pytest
import torch

import pipeline.loader
import pipeline.train
from assets.testing import run_assets
from pipeline.plan import build_plan

DATA = ["images", "encoder_features", "svd", "level_1_latents", "level_2_latents"]


@pytest.fixture(scope="module")
def data_home(tiny_cfg, tmp_path_factory):
    home = tmp_path_factory.mktemp("diverged_home")
    assert run_assets(tiny_cfg, home, names=DATA).success
    return home


def poisoned(monkeypatch, where: str):
    """load_level_data whose targets (or conditions) are NaN: a config can no longer ask for inf."""
    load = pipeline.loader.load_level_data  # the in-memory path (a tiny split) reads through it

    def fake(cfg, plan, level, split="train"):
        data = load(cfg, plan, level, split)
        if where == "target":
            return dataclasses.replace(data, x=torch.full_like(data.x, float("nan")))
        return dataclasses.replace(data, conds=[torch.full_like(c, float("nan")) for c in data.conds])

    monkeypatch.setattr(pipeline.loader, "load_level_data", fake)


@pytest.mark.parametrize("level, where", [(2, "target"), (1, "conditions")])
def test_non_finite_loss_stops_training(tiny_cfg, data_home, monkeypatch, level, where):
    poisoned(monkeypatch, where)
    stepped = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: stepped.append(1))
    with pytest.raises(FloatingPointError) as e:
        pipeline.train.train_level(tiny_cfg, build_plan(tiny_cfg, data_home), level)
    msg = str(e.value)
    assert f"level {level} diverged" in msg and "step 1/40" in msg and "nan" in msg, msg
    assert "lower lr" in msg and "float32" in msg, msg
    assert not stepped  # refused before the optimizer could write NaN into the weights
    stage = build_plan(tiny_cfg, data_home)[f"level_{level}_model"]
    assert not stage.artifact.is_complete()
