"""Training input in bounded memory (pipeline/loader.py): the choice of path by the memory budget, the streamed
split shared out by rank and DataLoader worker (every sample once per epoch), the streams zipped and checked on
keys, level 0's target transforms batch by batch, and tiny trained both ways."""
from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import pytest
import torch

from pipeline.config import load_config, parse_config
from pipeline.fingerprints import config_fingerprint
from pipeline.level_kinds import load_level_data
from pipeline.levels import latent_shards, read_latents, write_shards
from pipeline.loader import (GB, Collate, LevelStream, ShardedStream, StreamedBatches, choose_loader, data_loader,
                             estimated_bytes, level_streams, read_unit, stream_seed, work_units)
from pipeline.plan import build_plan
from pipeline.stages import materialize
from pipeline.train import train

CPU = torch.device("cpu")


def with_compute(cfg, level: int | None = None, **compute):
    """cfg with compute settings changed (and, for `level`, a short training run of it)."""
    data = cfg.model_dump(mode="json")
    data["compute"].update(compute)
    if level is not None:
        tc = data["level0"]["train"] if level == 0 else data["levels"][level - 1]["train"]
        tc.update(steps=20, log_every=5, checkpoint_every=20)  # no checkpoint: nothing for another run to resume
    return parse_config(data)


def keys_of(dataset) -> list[str]:
    return [key for key, *_ in dataset]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run["cfg"], build_plan(tiny_run["cfg"], tiny_run["home"])


def test_the_memory_budget_chooses_the_path(tiny):
    assert choose_loader("auto", 9 * GB, 8.0) == "stream" and choose_loader("auto", 7 * GB, 8.0) == "memory"
    assert choose_loader("memory", 9 * GB, 8.0) == "memory" and choose_loader("stream", 1, 8.0) == "stream"
    cfg, plan = tiny
    # level 0: 216 training images of 3x16x16 and their 16x4x4 and 8x2x2 conditions, float32, twice while loading
    assert estimated_bytes(cfg, plan, 0) == 2 * 216 * (4 * (3 * 16 * 16 + 16 * 4 * 4 + 8 * 2 * 2) + 8)
    assert estimated_bytes(cfg, plan, 2) == 2 * 216 * (4 * 8 * 2 * 2 + 8)


def test_loader_settings_are_validated_and_enter_no_fingerprint(tiny_cfg):
    streamed = with_compute(tiny_cfg, loader="stream", memory_budget_gb=0.5, loader_workers=3, shuffle_buffer=10)
    assert config_fingerprint(streamed) == config_fingerprint(tiny_cfg)  # the order of batches, not what is learned
    for bad, field in (({"loader": "disk"}, "compute.loader"), ({"memory_budget_gb": 0}, "compute.memory_budget_gb"),
                       ({"loader_workers": -1}, "compute.loader_workers"),
                       ({"shuffle_buffer": 0}, "compute.shuffle_buffer")):
        with pytest.raises(ValueError, match=field):
            with_compute(tiny_cfg, **bad)


def test_ranks_and_workers_read_every_training_sample_once_per_epoch(tiny, monkeypatch):
    """Level 0's image shards hold both splits mixed, its conditions' latent shards one split each: the units
    dealt out to 2 ranks x 3 workers still cover the training split exactly once in every epoch."""
    cfg, plan = tiny
    streams = level_streams(cfg, plan, 0)
    train_keys = sorted(read_latents(plan["level_1_latents"].path, "train")[0])
    for epoch in (0, 1):
        seen = Counter()
        for rank, worker in itertools.product(range(2), range(3)):
            monkeypatch.setenv("WORKER", str(worker))  # what webdataset's split_by_worker reads outside a DataLoader
            monkeypatch.setenv("NUM_WORKERS", "3")
            share = keys_of(LevelStream(streams, 0, seed=7, rank=rank, world=2, workers=3).one_epoch(epoch))
            assert share  # every worker has work
            seen.update(share)
        assert sorted(seen) == train_keys and set(seen.values()) == {1}
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    # through a real DataLoader with two worker processes: one epoch is the split, once
    loader = data_loader(LevelStream(streams, 0, seed=7, workers=2, epochs=1), 16, 2, CPU)
    assert sorted(itertools.chain.from_iterable(keys for keys, *_ in loader)) == train_keys


def test_the_stream_is_seeded_by_epoch_and_by_the_step_a_run_starts_from(tiny):
    cfg, plan = tiny
    streams = level_streams(cfg, plan, 2)
    stream = LevelStream(streams, 2, seed=stream_seed(0, 2, 0), shuffle_buffer=50)
    first, again = keys_of(stream.one_epoch(0)), keys_of(stream.one_epoch(0))
    assert first == again  # reproducible
    assert keys_of(stream.one_epoch(1)) != first  # each epoch its own order
    assert stream_seed(0, 2, 0) != stream_seed(0, 2, 100) != stream_seed(1, 2, 100)  # a resumed run reseeds
    # without end: the third epoch follows the second
    assert len(list(itertools.islice(iter(stream), 3 * len(first)))) == 3 * len(first)


def test_streamed_samples_are_the_in_memory_ones(tiny):
    cfg, plan = tiny
    data = load_level_data(cfg, plan, 0)
    row = {key: i for i, key in enumerate(data.keys)}
    streamed = LevelStream(level_streams(cfg, plan, 0), 0, seed=3, epochs=1)
    for keys, x, conds, labels in data_loader(streamed, 50, 0, CPU):
        idx = torch.tensor([row[k] for k in keys])
        assert torch.equal(x, data.x[idx]) and torch.equal(labels, data.labels[idx])
        assert all(torch.equal(c, full[idx]) for c, full in zip(conds, data.conds, strict=True))


def test_condition_keys_that_disagree_are_a_clear_error(tiny, tmp_path):
    """A condition whose shards hold other samples than the target's at the same positions (here: level 2's
    latents written in reverse order) is refused by name, never zipped silently."""
    cfg, plan = tiny
    keys, z, labels = read_latents(plan["level_2_latents"].path, "train")
    write_shards(tmp_path, (("train", k, zi, int(y)) for k, zi, y in zip(keys[::-1], z[::-1], labels[::-1])), 100)
    target = level_streams(cfg, plan, 2)[0]
    shuffled = ShardedStream("reversed latents", tuple(latent_shards(tmp_path)), target.counts, False)
    with pytest.raises(ValueError, match="reversed latents and level 2's level_2_latents disagree on keys at pos"):
        next(read_unit([target, shuffled], work_units([target, shuffled])[0], 2))
    short = dataclasses.replace(shuffled, counts=target.counts[:-1])
    with pytest.raises(ValueError, match="different numbers of samples"):
        work_units([target, short])


@pytest.fixture(scope="module")
def msf_matryoshka(tmp_path_factory):
    """MSF's pixel base under a matryoshka level 0: both target transforms, on images and level 1 alone."""
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    tc = data["levels"][0]["train"]
    data["levels"] = [{"kind": "pixel_base", "pool": 8, "channels": 3, "sigma": 0.1, "train": tc}]
    data["sampling"] = {**data["sampling"], "guidance": [0.1, 0.0]}
    data["level0"]["train"]["backbone"] = "matryoshka"
    data["compute"]["loader_workers"] = 2
    cfg = parse_config(data)
    plan = build_plan(cfg, tmp_path_factory.mktemp("msf_matryoshka"))
    for name in ("images", "level_1_latents"):
        materialize(cfg, plan, name, log=lambda _: None)
    return cfg, plan


def test_level_0_targets_stream_as_they_load(msf_matryoshka):
    """The residual's scale over the training split, from one streamed pass (workers), is the in-memory one, and
    each streamed batch's packed residual is the in-memory target of its samples."""
    cfg, plan = msf_matryoshka
    data = load_level_data(cfg, plan, 0)
    streamed = StreamedBatches(cfg, plan, 0, 16, CPU)
    assert streamed.target.keys() == data.target.keys() == {"residual", "matryoshka"}
    assert streamed.target["residual"]["scale"] == pytest.approx(data.target["residual"]["scale"], rel=1e-6)
    assert {**streamed.target["residual"], "scale": 0} == {**data.target["residual"], "scale": 0}
    assert streamed.target["matryoshka"] == data.target["matryoshka"]
    row = {key: i for i, key in enumerate(data.keys)}
    one_pass = LevelStream(streamed.streams, 0, seed=0, epochs=1)
    for keys, x, _, _ in data_loader(one_pass, 64, 0, CPU, Collate(cfg, streamed.target)):
        torch.testing.assert_close(x, data.x[torch.tensor([row[k] for k in keys])], atol=1e-5, rtol=0)


def test_tiny_trains_to_comparable_losses_in_memory_and_streamed(tiny, tmp_path):
    """Level 0 (pixels from the mixed image shards, two conditions) for 20 steps each way: the streamed run's loss
    falls as the in-memory run's does, and the model's metadata says which loader ran."""
    cfg, plan = tiny
    runs = {}
    for loader in ("memory", "stream"):
        run_cfg = with_compute(cfg, 0, loader=loader, loader_workers=2, shuffle_buffer=100)
        out = tmp_path / loader
        out.mkdir()
        meta = train(run_cfg, build_plan(run_cfg, plan["images"].artifact.home), out, level=0, log=lambda _: None)
        assert meta["resumed_from_step"] is None and meta["loader"] == loader
        assert meta["loader_workers"] == (2 if loader == "stream" else 0)
        runs[loader] = [loss for _, loss in meta["loss_curve"]]
    memory, stream = runs["memory"], runs["stream"]
    assert stream[-1] < 0.7 * stream[0] and memory[-1] < 0.7 * memory[0]
    assert stream[-1] == pytest.approx(memory[-1], rel=0.3)
