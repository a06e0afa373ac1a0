"""The engine interface (pipeline/engine.py) on the local engine: the operations the stages hand their work to, and
the features stage's spread path (what Ray runs) giving the local path's array. Ray itself: tests/test_ray_engine.py."""
import numpy as np
import pytest

from pipeline.engine import ENGINES, LocalEngine, engine_for
from pipeline.ray_engine import RayEngine


class Doubler:
    built = 0

    def __init__(self, offset: int):
        Doubler.built += 1
        self.offset = offset

    def __call__(self, item: int) -> int:
        return 2 * item + self.offset


def test_map_builds_the_worker_once_and_keeps_the_order():
    Doubler.built = 0
    assert list(LocalEngine().map(Doubler, {"offset": 1}, [3, 1, 2])) == [7, 3, 5]
    assert Doubler.built == 1


def test_the_local_engine_runs_no_process_group():
    seen = []
    LocalEngine().run_group(seen.append, {"a": 1}, 1, "one", None)
    assert seen == [{"a": 1}]
    with pytest.raises(ValueError, match="torchrun launches 2 ranks"):
        LocalEngine().run_group(seen.append, {}, 2, "level_1_model", None)


def test_every_engine_of_the_config_is_registered(tiny_cfg):
    from pipeline.schema import ComputeConfig

    names = ComputeConfig.model_fields["engine"].annotation.__args__
    assert set(ENGINES) == set(names)
    assert isinstance(engine_for(tiny_cfg), LocalEngine) and not engine_for(tiny_cfg).distributed
    ray = tiny_cfg.model_copy(update={"compute": tiny_cfg.compute.model_copy(update={"engine": "ray"})})
    assert isinstance(engine_for(ray), RayEngine) and engine_for(ray).distributed


def test_spread_features_through_map_shards_equal_the_local_stage(tiny_run, tmp_path):
    """The path the Ray engine runs (any batch order, whole chunks written when their last row lands), on the local
    engine's map_shards: the same array as extract_features."""
    from pipeline.features import extract_features, extract_features_spread, open_features
    from pipeline.plan import build_plan

    enc = tiny_run["cfg"].encoder.model_copy(update={"batch_size": 48})
    images = build_plan(tiny_run["cfg"], tiny_run["home"])["images"].path
    extract_features(enc, images, tmp_path / "local", chunk_rows=100, log=lambda _: None)
    extract_features_spread(enc, LocalEngine(), images, tmp_path / "spread", chunk_rows=100, log=lambda _: None)
    a, b = open_features(tmp_path / "local"), open_features(tmp_path / "spread")
    assert a.shape == b.shape and a.chunks == b.chunks
    np.testing.assert_allclose(a[:], b[:], rtol=1e-5, atol=1e-5)
