"""Top-down sampling: shapes, seeds, guidance."""
import torch

from pipeline.plan import build_plan
from pipeline.sample import sample_hierarchy, to_uint8


def test_top_down_sampling_is_seeded(tiny_run):
    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    how = cfg.sampling_plan(steps=4, guidance=[0.2, 0.3, 0.4], batch_size=2)
    assert how.steps == (4, 4, 4) and how.guidance == (0.2, 0.3, 0.4)
    a = sample_hierarchy(cfg, plan, 3, seed=1, sampling=how)
    b = sample_hierarchy(cfg, plan, 3, seed=1, sampling=how)
    c = sample_hierarchy(cfg, plan, 3, seed=2, sampling=how)
    assert a[0].shape == (3, 3, 16, 16) and a[1].shape == (3, 16, 4, 4) and a[2].shape == (3, 8, 2, 2)
    for level in a:
        assert torch.equal(a[level], b[level])
        assert not torch.equal(a[level], c[level])
    assert to_uint8(a[0]).shape == (3, 16, 16, 3)


def test_large_requests_are_generated_batch_by_batch(tiny_run):
    from pipeline.sample import iter_hierarchy

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    sizes = [b[0].shape[0] for b in iter_hierarchy(cfg, plan, 11, seed=0,
                                                          sampling=cfg.sampling_plan(steps=2, batch_size=4))]
    assert sizes == [4, 4, 3]  # never more than one batch of any level in memory


def test_class_conditional_sampling_draws_training_labels(tiny_run, monkeypatch):
    import numpy as np

    import pipeline.sample as sample
    from assets.testing import run_assets
    from pipeline.config import parse_config
    from pipeline.ingest import read_manifest

    data = tiny_run["cfg"].model_dump(mode="json")
    data["level0"]["train"]["steps"] = 3
    cfg = parse_config({**data, "levels": [], "class_conditional": True,
                        "sampling": {**data["sampling"], "guidance": data["sampling"]["guidance"][:1]}})
    assert run_assets(cfg, tiny_run["home"], names=["level_0_model"]).success
    plan = build_plan(cfg, tiny_run["home"])
    m = read_manifest(plan["images"].path)
    train = [y for y, s in zip(m.column("label").to_pylist(), m.column("split").to_pylist()) if s == "train"]
    np.testing.assert_array_equal(sample.label_frequencies(plan).numpy(), np.bincount(train))

    def only(label):  # every sample gets this label
        monkeypatch.setattr(sample, "label_frequencies", lambda plan: torch.nn.functional.one_hot(
            torch.tensor(label), 10).double())
        return sample_hierarchy(cfg, plan, 4, seed=0, sampling=cfg.sampling_plan(steps=3, guidance=[1.0]))[0]

    three = only(3)
    assert torch.equal(three, only(3)) and not torch.allclose(three, only(5))  # the label reaches the model


def test_given_coarse_latents_are_kept_and_condition_the_finer_levels(tiny_run):
    """The oracle ladder's partial oracles: the real latents of the levels >= k pass through unchanged, the levels
    below are generated, and they follow what was given (the same seed, other given latents: other samples)."""
    from pipeline.evaluate import oracle_conditions, oracle_ladder

    cfg, plan = tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])
    real, _ = oracle_conditions(cfg, plan, 4)
    ladder = oracle_ladder(real)
    assert list(ladder) == [2] and set(ladder[2]) == {2}  # L = 3: only the coarsest level given
    kw = dict(seed=3, sampling=cfg.sampling_plan(steps=3, guidance=[0.0, 0.0, 0.0], batch_size=4))
    part = sample_hierarchy(cfg, plan, 4, given=ladder[2], **kw)
    flipped = sample_hierarchy(cfg, plan, 4, given={2: -real[2]}, **kw)
    assert torch.equal(part[2], real[2]) and part[1].shape == real[1].shape
    assert not torch.allclose(part[1], real[1])  # generated, not copied
    assert not torch.allclose(part[1], flipped[1]) and not torch.allclose(part[0], flipped[0])
    assert oracle_ladder({1: real[1]}) == {}  # L = 2: the full oracle is the only one


def test_the_samples_and_the_evaluation_say_how_far_they_are_in_the_run_log(tiny_run):
    """Long stages log their progress where the UI's run view shows it: images done of N, rate and time left."""
    said = [e.user_message for e in tiny_run["instance"].all_logs(tiny_run["result"].run_id)]
    cfg = tiny_run["cfg"]
    n, seeds = cfg.sampling.num_samples, cfg.sampling.eval_seeds
    sets = seeds + (seeds if cfg.sampling.oracle and cfg.num_levels > 1 else 0)  # each seed's, and the oracle's
    assert any(m.startswith(f"samples: {n}/{n} images, ") and " in all" in m for m in said)
    assert any(m.startswith(f"evaluation: {k}/{sets} sample sets") for m in said for k in range(1, sets + 1))
    assert any(m.startswith(f"evaluation: {sets}/{sets} sample sets") for m in said)
    assert any(m.startswith("reference (training split): ") for m in said)


def test_the_grid_shows_small_images_at_least_64_px_and_large_ones_as_they_are(tmp_path):
    import numpy as np
    from PIL import Image

    from pipeline.sample import save_grid

    rng = np.random.default_rng(0)
    for size, cell in [(16, 64), (32, 64), (48, 96), (100, 100)]:
        images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        save_grid(images, tmp_path / "g.png", cols=8)
        grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
        assert grid.shape[:2] == (cell + 4, 3 * (cell + 2) + 2)  # make_grid: 2 px padding around each cell
        # nearest upscaling: the first cell is the first image, each pixel repeated (no smoothing)
        np.testing.assert_array_equal(grid[2:2 + cell:cell // size, 2:2 + cell:cell // size], images[0])
