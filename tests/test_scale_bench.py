"""benchmarks/scale.py's pure parts: the synthetic class folders, its configs, what a stage counts, the 8N / N check and
the table (the measurement itself is a benchmark, never a test)."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_images_are_deterministic_and_cycle_through_the_classes(scale):
    import numpy as np

    a, label_a = scale.synthetic_image(5, 32)
    b, label_b = scale.synthetic_image(5, 32)
    assert a.size == (32, 32) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b)) and label_a == label_b
    assert not np.array_equal(np.asarray(a), np.asarray(scale.synthetic_image(6, 32)[0]))
    assert [scale.synthetic_image(i, 16)[1] for i in range(8)] == list(scale.CLASSES) * 2


def test_make_dataset_is_a_folder_source_and_reused(scale, tmp_path):
    from pipeline.config import parse_config
    from pipeline.sources import get_source

    folder = scale.make_dataset(tmp_path / "data", 10, 16)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 10 and {p.parent.name for p in files} == set(scale.CLASSES)
    before = {p: p.stat().st_mtime_ns for p in files}
    scale.make_dataset(tmp_path / "data", 10, 16)  # the same set: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in files} == before
    # the first images of a larger set are the smaller set's
    bigger = scale.make_dataset(tmp_path / "bigger", 20, 16)
    assert (bigger / "disc" / "0000004.jpg").read_bytes() == (folder / "disc" / "0000004.jpg").read_bytes()

    cfg = parse_config({"dataset": {"source": "folder", "path": str(folder), "resolution": 16, "source_size": 16}})
    listing = get_source("folder").read(cfg.dataset)
    items, names = list(listing.items()), listing.names
    assert len(items) == 10 and sorted(names) == sorted(scale.CLASSES)


def test_configs_validate_and_count_their_work(scale, tmp_path):
    from pipeline.config import parse_config
    from pipeline.plan import build_plan

    folder = scale.make_dataset(tmp_path / "data", 40, 64)
    vae_dir = tmp_path / "vae"
    (vae_dir).mkdir()
    (vae_dir / "config.json").write_text("{}")  # the config only names the folder
    pixels, settings = scale.config("pixels", folder, 32, vae_dir, steps=3, batch=16, reference_images=8, threads=1)
    vae, _ = scale.config("vae", folder, 32, vae_dir, steps=3, batch=16, reference_images=8, threads=1)
    small_buffer = scale.config("vae", folder, 32, vae_dir, 3, 16, 8, 1, shuffle_buffer=50)[0]
    assert parse_config(small_buffer).compute.shuffle_buffer == 50
    cfg, vae_cfg = parse_config(pixels), parse_config(vae)
    assert cfg.compute.device == "cpu" and cfg.sampling.reference_images == 8 and settings["train"]["steps"] == 3
    assert vae_cfg.level0.space == "vae" and vae_cfg.level0.vae == str(vae_dir)
    assert cfg.train_config(0).batch_size == 16 and cfg.train_config(1).batch_size == 64
    big = parse_config(scale.config("pixels", folder, 256, vae_dir, None, None, 8, 1)[0])  # unet-tiny: out of memory
    assert (big.train_config(0).size, big.train_config(0).batch_size, big.train_config(0).steps) == ("small", 4, 3)
    assert big.sampling.num_samples == 4 and big.dataset.source_size == 256
    with pytest.raises(ValueError, match="pixels or vae"):
        scale.config("latent", folder, 32, vae_dir, 3, 16, 8, 1)

    plan = build_plan(cfg, tmp_path / "home")
    assert scale.upstream_of(plan, ["svd"]) == {"svd", "encoder_features", "images"}
    images = {"num_images": 40, "num_train": 38}
    assert scale.work_done(cfg, "models", {"level": 0, "steps": 3}, images) == (48, "training samples (steps x batch)",
                                                                                 False)
    assert scale.work_done(cfg, "features", {"shape": [40, 4, 4, 1280]}, images)[::2] == (40, True)
    assert scale.work_done(cfg, "neighbours", {}, images)[::2] == (38, True)
    assert scale.work_done(cfg, "evaluation", {}, images)[::2] == (64 * 2, False)  # one seed and the oracle
    assert scale.work_done(cfg, "a_kind_added_later", {}, images)[::2] == (40, True)


def run(stage, n, rss, ips, workers=0.0, config="pixels"):
    return {"stage": stage, "config": config, "res": 32, "n": n, "peak_rss_mib": rss, "images_per_s": ips,
            "children_peak_pss_mib": workers, "scales_with_n": True, "unit": "images"}


def test_check_computes_the_ratios_and_the_verdicts(scale):
    runs = [run("flat", 100, 100.0, 50.0), run("flat", 800, 110.0, 45.0),        # 1.10x, 1.11x: meets
            run("grows", 100, 100.0, 50.0), run("grows", 800, 200.0, 50.0),      # memory doubles
            run("slows", 100, 100.0, 50.0), run("slows", 800, 100.0, 25.0),      # time per image doubles
            run("noise", 100, 2.0, 50.0), run("noise", 800, 5.0, 50.0),          # 2.5x but only 3 MiB
            run("workers", 100, 10.0, 50.0, 100.0), run("workers", 800, 10.0, 50.0, 300.0),
            run("unpaired", 100, 1.0, 1.0), run("flat", 800, 1.0, 1.0, config="vae")]
    got = {c["stage"]: c for c in scale.check(runs)}
    assert set(got) == {"flat", "grows", "slows", "noise", "workers"}
    assert got["flat"]["meets"] and got["flat"]["rss_ratio"] == 1.1 and got["flat"]["time_per_image_ratio"] == 1.111
    assert not got["grows"]["meets_rss"] and got["grows"]["meets_time"] and got["grows"]["rss_ratio"] == 2.0
    assert got["slows"]["meets_rss"] and not got["slows"]["meets_time"] and got["slows"]["time_per_image_ratio"] == 2.0
    assert got["noise"]["meets"] and got["noise"]["rss_grown_mib"] == 3.0
    assert not got["workers"]["meets_rss"] and got["workers"]["children_ratio"] == 3.0
    assert scale.memory_growth(0.0, 10.0)[0] == math.inf and scale.memory_growth(0.0, 0.0) == (1.0, 0.0, True)

    table = scale.table({"runs": runs, "check": scale.check(runs)})
    lines = table.splitlines()
    assert len(lines) == 2 + 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert ("| pixels | 32 | grows | images | 100 | 100.0 | 50.0 | 800 | 200.0 | 50.0 | 2.00x | 1.00x | NO: RSS |"
            in table)
    assert "10.0 + 300.0" in table and "(workers 3.00x)" in table


def test_projection_extrapolates_time_per_unit_and_memory_in_n(scale):
    runs = [run("flat", 100, 100.0, 50.0), run("flat", 800, 100.0, 50.0),
            {**run("grows", 100, 100.0, 10.0, workers=24.0), "units": 100},
            {**run("grows", 800, 800.0, 10.0, workers=24.0), "units": 800},
            {**run("fixed", 100, 10.0, 2.0), "units": 64, "scales_with_n": False},
            {**run("fixed", 800, 10.0, 2.0), "units": 64, "scales_with_n": False}]
    runs[0]["units"], runs[1]["units"] = 100, 800
    # a pair at a smaller N is ignored where a larger one was measured
    runs += [{**run("flat", 10, 1.0, 50.0), "units": 10}, {**run("flat", 80, 100.0, 50.0), "units": 80}]
    result = {"runs": runs, "check": scale.check(runs)}
    lines = scale.projection(result, 8000).splitlines()[2:]
    rows = {line.split(" | ")[2]: line for line in lines}
    assert len(lines) == len(rows) == 3
    assert scale.projection(result, 8000, res=256).splitlines()[2:] == []  # every run here is at 32 px
    # 8,000 units at 50/s; memory flat
    assert rows["flat"] == "| pixels | 32 | flat | 8,000 | 0.04 | 0.10 |"
    # 1 MiB per image: 824 MiB at 800 images, 8,024 at 8,000
    assert rows["grows"] == "| pixels | 32 | grows | 8,000 | 0.22 | 7.84 |"
    # a fixed amount of work stays fixed
    assert rows["fixed"] == "| pixels | 32 | fixed | 64 | 0.01 | 0.01 |"


def test_repeated_measurements_keep_the_fastest_time_and_the_largest_peaks(scale):
    runs = [{"seconds": 9.0, "peak_rss_mib": 100.0, "children_peak_pss_mib": 5.0, "baseline_rss_mib": 800.0, "meta": 1},
            {"seconds": 7.5, "peak_rss_mib": 90.0, "children_peak_pss_mib": 7.0, "baseline_rss_mib": 801.0, "meta": 2},
            {"seconds": 8.0, "peak_rss_mib": 95.0, "children_peak_pss_mib": 6.0, "baseline_rss_mib": 799.0, "meta": 3}]
    got = scale.repeated(runs[0], runs[1:])
    assert got["seconds"] == 7.5 and got["meta"] == 2 and got["seconds_each"] == [9.0, 7.5, 8.0]
    assert (got["peak_rss_mib"], got["children_peak_pss_mib"], got["baseline_rss_mib"]) == (100.0, 7.0, 801.0)
    assert scale.repeated(runs[0], []) == {**runs[0], "seconds_each": [9.0]}
