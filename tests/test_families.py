"""benchmarks/families.py's reading of the family sweep: each run's family, budgets by sampling cost, verdicts
that respect the noise, and the runs it shares with the level ablation."""
import importlib.util

import pytest

from pipeline.config import PROJECT_ROOT as ROOT
from pipeline.config import load_config, variant_configs
from pipeline.fingerprints import config_fingerprint


def families():
    spec = importlib.util.spec_from_file_location("families", ROOT / "benchmarks" / "families.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(variant, fam, fids, gflops):
    return {"variant": variant, "family": fam, "fid_seeds": fids, "fid": sum(fids) / len(fids),
            "fid_std": (max(fids) - min(fids)) / 2, "L": 1, "gflops_per_image": gflops, "gflops_per_forward": 0.1,
            "train_gflops": 1.0}


@pytest.fixture(scope="module")
def sweep():
    cfg = load_config(ROOT / "configs" / "families_cpu.yaml", check_files=False)
    return {"base": cfg, **variant_configs(cfg, check_files=False)}


def test_every_family_of_the_seeds_is_in_the_sweep(sweep):
    fam = families()
    assert {v: fam.family(c) for v, c in sweep.items()} == {
        "base": "nested", "L1": "plain", "msf": "msf", "msf_25": "msf", "cascade": "cascade",
        "matryoshka": "matryoshka", "msf_unet_base": "msf", "nested_msf": "nested_msf",
        "nested_msf_seed1": "nested_msf", "seed1": "nested", "L1_seed1": "plain", "nested_msf_sel_base14": "nested_msf",
        "nested_msf_sel_res6": "nested_msf", "nested_msf_sel_res_w0": "nested_msf", "nested_msf_budget": "nested_msf",
        "nested_msf_budget_seed1": "nested_msf", "nested_msf_budget_base9k": "nested_msf",
        "nested_msf_budget_base9k_seed1": "nested_msf", "nested_msf_sel_b9k_w03": "nested_msf",
        "nested_msf_sel_b9k_w0": "nested_msf", "nested_msf_sel_b9k_w1": "nested_msf", "nested_msf_sel_b9k_w2": "nested_msf",
        "nested_msf_budget_base9k_w1": "nested_msf", "nested_msf_budget_base9k_w1_seed1": "nested_msf",
        "L1_matched_base9k": "plain", "nested_msf_b9k_w1_sem9k": "nested_msf",
        "nested_msf_b9k_w1_sem9k_seed1": "nested_msf", "L1_matched_sem9k": "plain",
        "nested_msf_sel_sem9k_w03": "nested_msf", "nested_msf_sel_sem9k_w1": "nested_msf",
        "nested_msf_sel_sem9k_w2": "nested_msf", "nested_msf_sel_sem9k_res_w05": "nested_msf",
        "nested_msf_sel_sem9k_res_w2": "nested_msf", "nested_msf_b9k_w1_sem27k": "nested_msf",
        "nested_msf_b9k_w1_sem27k_seed1": "nested_msf", "L1_matched_sem27k": "plain",
        "nested_msf_sel_sem27k": "nested_msf", "nested_msf_b27k_w1_sem27k": "nested_msf",
        "nested_msf_b27k_w1_sem27k_seed1": "nested_msf", "L1_matched_b27k": "plain",
        "nested_msf_sel_b27k": "nested_msf", "nested_msf_b27k_res9k": "nested_msf", "L1_matched_res9k": "plain",
        "nested_msf_sel_res9k": "nested_msf", "nested_msf_b27k_res9k_seed1": "nested_msf",
        "nested_msf_res9k_f81k": "nested_msf", "L1_matched_f81k": "plain",
        "nested_msf_sel_f81k": "nested_msf", "nested_msf_res9k_f81k_seed1": "nested_msf",
        "nested_msf_f81k_c81k": "nested_msf", "nested_msf_f81k_c81k_seed1": "nested_msf", "nested_msf_sel_c81k": "nested_msf",
        "nested_msf_sel_c81k_fw0": "nested_msf",
        "nested_msf_sel_f81k_cs05": "nested_msf", "nested_msf_sel_f81k_cs15": "nested_msf",
        "nested_msf_f81k_cs15": "nested_msf", "nested_msf_f81k_cs15_seed1": "nested_msf"}
    assert fam.arm(sweep["seed1"]) == fam.arm(sweep["base"]) and fam.arm(sweep["L1_seed1"]) == fam.arm(sweep["L1"])
    assert fam.arm(sweep["nested_msf_seed1"]) == fam.arm(sweep["nested_msf"]) != fam.arm(sweep["msf_unet_base"])
    assert sweep["nested_msf"].sampling_steps() == [10, 25, 25, 25]
    # the selection runs sample other seeds than the reported ones; the budget run reports the one they chose
    reported = sweep["base"].sampling.seed
    assert all((c.sampling.seed != reported) == ("_sel_" in v) for v, c in sweep.items())
    assert sweep["nested_msf_budget"].sampling_steps() == sweep["nested_msf_sel_base14"].sampling_steps()
    assert sweep["msf"].sampling_steps() == [10, 25] and sweep["msf_25"].sampling_steps() == [25, 25]
    # the chosen guidance is the selection run's, reported on both training seeds (one arm)
    assert sweep["nested_msf_budget_base9k_w1"].guidance() == sweep["nested_msf_sel_b9k_w1"].guidance()
    assert fam.arm(sweep["nested_msf_budget_base9k_w1_seed1"]) == fam.arm(sweep["nested_msf_budget_base9k_w1"])
    # the 4x4x32 level's and the residual's weights were tried on sem9k's models: their selection runs change the
    # guidance alone
    for w in ("w03", "w1", "w2", "res_w05", "res_w2"):
        sel = sweep[f"nested_msf_sel_sem9k_{w}"]
        assert fam.arm(sel.model_copy(update={"sampling": sweep["nested_msf_b9k_w1_sem9k"].sampling})) == \
            fam.arm(sweep["nested_msf_b9k_w1_sem9k"])
    # c81k's 4x4x32 weight at 0: the same models as its ladder's selection run, the guidance alone changed
    fw0, sel = sweep["nested_msf_sel_c81k_fw0"], sweep["nested_msf_sel_c81k"]
    assert fw0.guidance() == [1.0, 1.0, 0.0, 0.5] and fam.arm(fw0.model_copy(update={"sampling": sel.sampling})) == fam.arm(sel)
    assert fw0.sampling.seed == sel.sampling.seed == 0
    # the coarse sigma's selection runs: f81k's models but for the sigma of the 2x2x16 condition
    f81k = sweep["nested_msf_sel_f81k"]
    for name, sigma in [("nested_msf_sel_f81k_cs05", 0.5), ("nested_msf_sel_f81k_cs15", 1.5)]:
        cs = sweep[name]
        assert [lv.sigma for lv in cs.levels] == [lv.sigma for lv in f81k.levels[:2]] + [sigma]
        assert cs.sampling == f81k.sampling and cs.level0 == f81k.level0
        assert [lv.model_copy(update={"sigma": 0.0}) for lv in cs.levels] == \
            [lv.model_copy(update={"sigma": 0.0}) for lv in f81k.levels]
    # the chosen sigma, reported: the selection run's models and config but for the sampling seeds, both training seeds
    cs15, sel15 = sweep["nested_msf_f81k_cs15"], sweep["nested_msf_sel_f81k_cs15"]
    assert fam.arm(sel15.model_copy(update={"sampling": cs15.sampling})) == fam.arm(cs15)
    assert cs15.sampling == sweep["nested_msf_res9k_f81k"].sampling
    assert fam.arm(sweep["nested_msf_f81k_cs15_seed1"]) == fam.arm(cs15) and sweep["nested_msf_f81k_cs15_seed1"].train_seed == 1
    # the ladders of sem27k, b27k, res9k, f81k and c81k read their seed-0 FIDs from selection runs of the same models
    for sel, arm in [("nested_msf_sel_sem27k", "nested_msf_b9k_w1_sem27k"), ("nested_msf_sel_b27k", "nested_msf_b27k_w1_sem27k"),
                     ("nested_msf_sel_res9k", "nested_msf_b27k_res9k"), ("nested_msf_sel_f81k", "nested_msf_res9k_f81k"),
                     ("nested_msf_sel_c81k", "nested_msf_f81k_c81k")]:
        sel, arm = sweep[sel], sweep[arm]
        assert sel.sampling.seed == 0 and sel.sampling.eval_seeds == 1
        assert fam.arm(sel.model_copy(update={"sampling": arm.sampling})) == fam.arm(arm)


def test_compute_matched_plain_run_has_the_training_flops_of_its_arm(sweep):
    from pipeline.costs import matched_steps, train_gflops

    for matched, arm in [("L1_matched_base9k", "nested_msf_budget_base9k"), ("L1_matched_sem9k", "nested_msf_b9k_w1_sem9k"),
                         ("L1_matched_sem27k", "nested_msf_b9k_w1_sem27k"),
                         ("L1_matched_b27k", "nested_msf_b27k_w1_sem27k"), ("L1_matched_res9k", "nested_msf_b27k_res9k"),
                         ("L1_matched_f81k", "nested_msf_res9k_f81k")]:
        matched, arm = sweep[matched], sweep[arm]
        assert matched.num_levels == 1 and matched.level0.train.steps == matched_steps(arm)
        assert train_gflops(matched) == pytest.approx(train_gflops(arm), rel=1e-3)
    # sem9k: every level above the pixels trained 9000 steps, level 0 as in every run
    assert [lv.train.steps for lv in sweep["nested_msf_b9k_w1_sem9k"].levels] == [9000, 9000, 9000]
    assert sweep["nested_msf_b9k_w1_sem9k"].level0.train.steps == 3000
    # b27k: the 8x8 base trained 27000 steps too, over sem27k's semantic levels
    assert [lv.train.steps for lv in sweep["nested_msf_b27k_w1_sem27k"].levels] == [27000, 27000, 27000]
    assert sweep["nested_msf_b27k_w1_sem27k"].level0.train.steps == 3000
    # res9k: b27k's levels, the residual (level 0) trained 9000 steps, its oracle sampled again
    res9k = sweep["nested_msf_b27k_res9k"]
    assert res9k.level0.train.steps == 9000 and res9k.levels == sweep["nested_msf_b27k_w1_sem27k"].levels
    assert res9k.sampling.oracle
    fam = families()
    assert fam.arm(sweep["nested_msf_b27k_res9k_seed1"]) == fam.arm(res9k)
    # f81k: res9k with the 4x4x32 level (levels[1]) trained 81000 steps; the others and level 0 are res9k's
    f81k = sweep["nested_msf_res9k_f81k"]
    assert [lv.train.steps for lv in f81k.levels] == [27000, 81000, 27000]
    assert f81k.level0 == res9k.level0 and [lv.pool for lv in f81k.levels] == [lv.pool for lv in res9k.levels]
    assert f81k.sampling_steps() == res9k.sampling_steps() and f81k.guidance() == res9k.guidance()
    assert fam.arm(sweep["nested_msf_res9k_f81k_seed1"]) == fam.arm(f81k)
    # c81k: f81k with the 2x2x16 level (levels[2]) trained 81000 steps too
    c81k = sweep["nested_msf_f81k_c81k"]
    assert [lv.train.steps for lv in c81k.levels] == [27000, 81000, 81000] and c81k.level0 == res9k.level0
    assert c81k.sampling == f81k.sampling
    assert fam.arm(sweep["nested_msf_f81k_c81k_seed1"]) == fam.arm(c81k)


def test_nested_and_plain_runs_are_the_level_ablations_own(sweep):
    """What lets the family sweep read them from ablation.json instead of training them again."""
    ab = load_config(ROOT / "configs" / "ablation_cpu.yaml", check_files=False)
    for run, same in [(sweep["base"], ab), (sweep["L1"], variant_configs(ab, check_files=False)["L1"])]:
        assert config_fingerprint(run) == config_fingerprint(same)
    assert config_fingerprint(sweep["cascade"]) != config_fingerprint(sweep["msf_25"])


def test_runs_within_the_spread_share_a_budget_and_the_winner_is_weighed_against_the_noise():
    fam = families()
    runs = [run("L1", "plain", [100, 102, 98], 3.3), run("msf", "msf", [90, 91, 89], 3.4),
            run("mat", "matryoshka", [99, 101, 97], 4.2), run("base", "nested", [82, 84, 80], 7.5),
            run("cascade", "cascade", [83, 85, 81], 7.4)]
    groups = fam.budgets(runs)
    assert [[r["variant"] for r in g] for g in groups] == [["L1", "msf", "mat"], ["cascade", "base"]]
    v = fam.verdicts(runs)
    cheap, dear = v["budgets"]
    assert cheap["best"] == "msf" and cheap["best_vs_runner_up"]["verdict"] == "met"
    assert dear["best"] == "base" and dear["best_vs_runner_up"]["verdict"] == "inconclusive"  # gap 1 < std 2
    assert v["vs_plain"]["mat"]["verdict"] == "inconclusive" and v["vs_plain"]["base"]["verdict"] == "met"
    assert v["vs_plain"]["base"]["gflops_per_image_ratio"] == pytest.approx(7.5 / 3.3, abs=1e-3)


def test_markdown_has_a_row_per_run_cheapest_first():
    fam = families()
    runs = [dict(run("base", "nested", [82, 84], 7.5), oracle_fid=70.0, oracle_fid_std=1.0, level_steps=[25] * 3,
                 fid_floor=40.0, train_seconds=900.0, images_per_sec=12.0),
            dict(run("L1", "plain", [100, 102], 3.3), oracle_fid=None, level_steps=[25], fid_floor=40.0)]
    table = fam.markdown(runs).splitlines()
    assert len(table) == 4 and table[2].startswith("| L1 | plain | 1 | 25 | 101.00 +- 1.00 | - |")
    assert "70.00 +- 1.00" in table[3] and "7.50 (2.27x)" in table[3] and table[3].endswith("| 900 | 12.0 |")


def test_training_seeds_are_pooled_and_selection_runs_stay_out_of_the_verdicts():
    fam = families()
    runs = [dict(run("L1", "plain", [100, 102, 98], 3.3), arm="p"), dict(run("L1_seed1", "plain", [101, 99, 100], 3.3), arm="p"),
            dict(run("nm", "nested_msf", [60, 61, 59], 3.9), arm="n"), dict(run("nm_seed1", "nested_msf", [64, 63, 65], 3.9), arm="n"),
            dict(run("alone", "msf", [90, 91, 89], 3.4), arm="a"),
            dict(run("nm_sel", "nested_msf", [10], 3.6), arm="s", selection=True, seeds=[0])]
    v = fam.verdicts(runs)
    assert list(v["vs_plain_pooled"]) == ["nm"]  # the only arm besides plain with two training seeds
    pooled = v["vs_plain_pooled"]["nm"]
    assert pooled["fid_a"] == pytest.approx(62.0) and pooled["fid_b"] == pytest.approx(100.0)
    assert pooled["training_seeds"] == 2 and pooled["verdict"] == "missed"  # 0.62x: a real gain, above 0.6x
    assert v["selection"] == ["nm_sel: 10.00 on sampling seeds [0], 3.60 GFLOPs / image"]
    assert all("nm_sel" not in b["ranking"][0] for b in v["budgets"]) and "nm_sel" not in v["vs_plain"]
    assert fam.verdicts(runs, ratio_target=0.65)["vs_plain_pooled"]["nm"]["verdict"] == "met"


def test_an_arm_is_weighed_against_plain_diffusion_trained_with_its_flops():
    fam = families()
    runs = [dict(run("L1", "plain", [100, 102, 98], 3.3), arm="p"),
            dict(run("L1_m", "plain", [95, 96, 94], 3.3), arm="m", compute_matched=True, train_gflops=2.0),
            dict(run("nm", "nested_msf", [60, 61, 59], 3.9), arm="n", train_gflops=2.01),
            dict(run("nm_seed1", "nested_msf", [64, 63, 65], 3.9), arm="n", train_gflops=2.01),
            dict(run("cheap", "msf", [90, 91, 89], 3.4), arm="a")]  # 1.0 train GFLOPs: not matched
    v = fam.verdicts(runs)
    assert v["vs_plain"]["nm"]["fid_b"] == pytest.approx(100.0)  # plain is L1, not the matched run
    assert list(v["vs_compute_matched"]) == ["nm vs L1_m"]
    m = v["vs_compute_matched"]["nm vs L1_m"]
    assert m["fid_a"] == pytest.approx(62.0) and m["fid_b"] == pytest.approx(95.0) and m["training_seeds"] == 2


def test_a_recorded_run_outlives_the_artifact_cache_while_its_config_is_unchanged(sweep, tmp_path):
    """An empty artifact home (a new machine) keeps what families.json recorded for an unchanged config, drops a
    record whose config has changed since, and still refuses a run asked for that has no evaluation."""
    fam = families()
    runs_of = {v: (sweep[v], None) for v in ("msf", "cascade")}
    earlier = [dict(run("msf", "msf", [90.0, 91.0, 92.0], 3.4), config_fingerprint=config_fingerprint(sweep["msf"]),
                    profile="cpu", recorded_in="families.json"),
               dict(run("cascade", "cascade", [95.0, 96.0, 97.0], 7.4), config_fingerprint="0" * 16, profile="cpu",
                    recorded_in="families.json")]
    got = fam.gather(sweep["base"], tmp_path, "cpu", [], runs_of, earlier)
    assert [(r["variant"], r["fid_seeds"], r["family"]) for r in got] == [("msf", [90.0, 91.0, 92.0], "msf")]
    assert fam.gather(sweep["base"], tmp_path, "cpu", [], runs_of, []) == []
    with pytest.raises(SystemExit, match="'msf' has no evaluation"):
        fam.gather(sweep["base"], tmp_path, "cpu", ["msf"], runs_of, earlier)
