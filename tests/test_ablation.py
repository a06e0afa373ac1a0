"""benchmarks/ablation.py's reading of the sweep: verdicts that respect the noise, compute-matched baselines
kept in step with their configs, and the dry run."""
import importlib.util
import sys

import pytest

from pipeline.config import PROJECT_ROOT as ROOT
from pipeline.config import load_config, variant_configs
from pipeline.costs import matched_steps, train_gflops


def ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "benchmarks" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(variant, L, fids, sigma_top=1.0, conditional=False, matched=False, oracle=None, guidance=(1.0, 0.3, 0.5)):
    return {"guidance": list(guidance)[:L], "profile": "cpu", "dataset": "d", "variant": variant, "L": L, "sigma_top": sigma_top if L > 1 else 0.0,
            "conditional": conditional, "compute_matched": matched, "fid_seeds": fids, "fid": sum(fids) / len(fids),
            "fid_floor": 40.0, "gflops_per_image": 3.0 * L, "gflops_per_forward": 1.0 + 0.1 * L,
            "train_gflops": 10.0, "oracle_fid": oracle}


@pytest.mark.parametrize("name", ["ablation_cpu", "ablation_gpu"])
def test_compute_matched_baseline_has_the_nested_runs_training_flops(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", check_files=False)
    matched = variant_configs(cfg, check_files=False)["L1_matched"]
    assert matched.num_levels == 1 and matched.level0.train.steps == matched_steps(cfg)
    assert train_gflops(matched) == pytest.approx(train_gflops(cfg), rel=1e-3)
    assert train_gflops(variant_configs(cfg, check_files=False)["L1"]) < train_gflops(cfg)


def test_a_gap_inside_the_seed_noise_is_inconclusive():
    ab = ablation()
    runs = [run("L1", 1, [100, 104, 96]), run("L1_seed1", 1, [101, 99, 103]),
            run("base", 3, [98, 102, 97]), run("seed1", 3, [99, 103, 100])]
    v = ab.verdicts(runs)["cpu/d"]["L3_vs_L1"]
    assert v["verdict"] == "inconclusive" and set(v["a"]) == {"base", "seed1"}


def test_met_needs_the_ratio_and_two_stds():
    ab = ablation()
    far = [run("L1", 1, [100, 101, 99]), run("base", 3, [50, 51, 49], oracle=45.0)]
    v = ab.verdicts(far)["cpu/d"]
    assert v["L3_vs_L1"]["verdict"] == "met" and v["L3_vs_L1"]["ratio"] == pytest.approx(0.5)
    assert v["oracle_fid_L3"] == 45.0 and v["oracle_target_met"]  # 45 <= 1.3 x 40
    near = [run("L1", 1, [100, 101, 99]), run("base", 3, [80, 81, 79])]  # beyond the noise, ratio 0.8 > 0.6
    assert ab.verdicts(near)["cpu/d"]["L3_vs_L1"]["verdict"] == "missed"


def test_sigma_matched_and_conditional_comparisons_pick_their_runs():
    ab = ablation()
    runs = [run("L1", 1, [100, 102]), run("L1_matched", 1, [90, 92], matched=True),
            run("base", 3, [70, 72], oracle=50.0), run("sigma_top_0", 3, [80, 82], sigma_top=0.0, oracle=60.0),
            run("w0_0", 3, [90, 91], guidance=(0.0, 0.3, 0.5), oracle=65.0), run("cond_L1", 1, [60, 61], conditional=True),
            run("cond_L2", 2, [60.5, 61.5], conditional=True)]
    v = ab.verdicts(runs)["cpu/d"]
    assert v["L3_vs_compute_matched_L1"]["b"] == ["L1_matched"] and v["L3_vs_compute_matched_L1"]["verdict"] == "met"
    assert v["sigma_beats_zero"]["b"] == ["sigma_top_0"] and v["sigma_beats_zero"]["verdict"] == "met"
    assert v["conditional_L2_beats_L1"]["verdict"] == "inconclusive"
    assert v["L3_vs_L1"]["b"] == ["L1"]  # the matched baseline is not pooled with the plain one
    assert v["oracle_fid_L3"] == 50.0  # the oracle of the target's own runs, not of sigma 0's or w = 0's


def test_dry_run_lists_every_run_and_builds_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NESTED_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--config", str(ROOT / "configs" / "ablation_cpu.yaml"),
                                      "--dry-run"])
    ablation().main()
    out = capsys.readouterr().out
    cfg = load_config(ROOT / "configs" / "ablation_cpu.yaml", check_files=False)
    for name in ["base", *cfg.variants]:
        assert f"| {name} |" in out
    assert not any(tmp_path.iterdir())


def test_markdown_table_has_one_row_per_run_with_its_noise():
    runs = [dict(run("L1", 1, [100, 102]), fid_std=1.41, sigmas=[], train_seed=0, precision=0.3, recall=0.3,
                 oracle_fid_std=None),
            dict(run("base", 3, [80, 82], oracle=70.0), fid_std=1.41, sigmas=[0.5, 1.0], train_seed=0, precision=0.4,
                 recall=0.4, oracle_fid_std=2.0)]
    table = ablation().markdown(runs).splitlines()
    assert len(table) == 4 and "| L1 | 1 | - | no | 0 | 101.00 +- 1.41 | - |" in table[2]
    assert "70.00 +- 2.00" in table[3] and "(3.00x)" in table[3]  # 9 vs 3 GFLOPs per image


def test_runs_with_other_guidance_are_not_pooled_with_the_base():
    ab = ablation()
    runs = [run("L1", 1, [100, 101, 99]), run("base", 3, [80, 81, 79]), run("seed1", 3, [82, 81, 80]),
            run("w0_0", 3, [95, 96, 94], guidance=(0.0, 0.3, 0.5))]
    v = ab.verdicts(runs)["cpu/d"]
    assert set(v["L3_vs_L1"]["a"]) == {"base", "seed1"}
    assert v["L3_other_guidance_vs_L1"]["a"] == ["w0_0"] and v["L3_other_guidance_vs_L1"]["verdict"] == "missed"


def test_a_gap_between_one_and_two_stds_is_weak_and_a_loss_is_missed():
    ab = ablation()
    weak = ab.compare(ab.pooled([run("a", 3, [80, 82, 84])]), ab.pooled([run("b", 3, [83, 85, 87])]))
    assert weak["verdict"] == "weak" and not weak["beyond_two_std"]  # gap 3, std 2
    worse = ab.compare(ab.pooled([run("a", 3, [90, 91, 92])]), ab.pooled([run("b", 3, [80, 81, 82])]))
    assert worse["verdict"] == "missed" and worse["gap"] < 0


def test_a_collection_keeps_the_recorded_runs_of_unchanged_configs():
    """Adding one variant to a finished sweep on a fresh machine keeps the runs whose artifacts are gone, as long
    as their config is unchanged; a run built again replaces its record, a changed config drops it."""
    from pipeline.fingerprints import config_fingerprint

    ab = ablation()
    cfg = load_config(ROOT / "configs" / "ablation_cpu.yaml", check_files=False)
    configs = ab.sweep_configs(cfg)
    first, second = list(configs)[:2]
    fp = {v: config_fingerprint(c) for v, c in configs.items()}
    recorded = [{**run(first, 3, [90.0]), "config_fingerprint": fp[first]},
                {**run(second, 1, [99.0]), "config_fingerprint": fp[second]},
                {**run("gone", 1, [50.0]), "config_fingerprint": "0" * 16},
                {**run(first, 3, [70.0]), "profile": "gpu", "config_fingerprint": fp[first]}]
    fresh = [{**run(second, 1, [95.0]), "config_fingerprint": fp[second]}]
    runs = ab.keep_recorded(recorded, fresh, cfg, "cpu")
    assert [(r["variant"], r["fid_seeds"]) for r in runs] == [(first, [90.0]), (second, [95.0])]
    assert runs[0]["train_gflops"] == pytest.approx(train_gflops(configs[first]))  # costs from the config as it is
    stale = [{**recorded[0], "config_fingerprint": "f" * 16}]
    assert ab.keep_recorded(stale, [], cfg, "cpu") == []
