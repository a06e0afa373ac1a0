"""Top-down sampling draft (issue 4 builds the assets on it): shapes, seeds, guidance."""
import torch

from pipeline.plan import build_plan
from pipeline.sample import sample_hierarchy, to_uint8


def test_top_down_sampling_is_seeded(tiny_run):
    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    a = sample_hierarchy(cfg, plan, 3, seed=1, steps=4, guidance=[0.2, 0.3, 0.4], batch_size=2)
    b = sample_hierarchy(cfg, plan, 3, seed=1, steps=4, guidance=[0.2, 0.3, 0.4], batch_size=2)
    c = sample_hierarchy(cfg, plan, 3, seed=2, steps=4, guidance=[0.2, 0.3, 0.4], batch_size=2)
    assert a[0].shape == (3, 3, 16, 16) and a[1].shape == (3, 16, 4, 4) and a[2].shape == (3, 8, 2, 2)
    for level in a:
        assert torch.equal(a[level], b[level])
        assert not torch.equal(a[level], c[level])
    assert to_uint8(a[0]).shape == (3, 16, 16, 3)


def test_large_requests_are_generated_batch_by_batch(tiny_run):
    from pipeline.sample import iter_hierarchy

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    sizes = [b[0].shape[0] for b in iter_hierarchy(cfg, plan, 11, seed=0, steps=2, batch_size=4)]
    assert sizes == [4, 4, 3]  # never more than one batch of any level in memory
