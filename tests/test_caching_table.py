"""The caching table of docs/caching.md, row by row: what a config edit rebuilds (fingerprints) and what the UI marks stale
(code versions), on configs/tiny.yaml with both conditioning schemes. Expected sets come from the table's rules."""
import pytest

from pipeline.config import load_config, parse_config
from pipeline.plan import build_plan

EVAL = {"samples", "evaluation", "variations"}  # variations sample from every model, as samples do


def tiny(conditioning):
    data = load_config("configs/tiny.yaml").model_dump(mode="json")
    return parse_config({**data, "conditioning": conditioning})


def edited(cfg, edit):
    data = cfg.model_dump(mode="json")
    edit(data)
    return parse_config(data)


def conditioned_on(cfg, level):
    return {f"level_{j}_model" for j in range(cfg.num_levels) if level in cfg.conditions_of(j)}


def changes(before, after, home):
    b, a = build_plan(before, home), build_plan(after, home)
    assert b.keys() == a.keys()
    return {n for n in b if b[n].fingerprint != a[n].fingerprint}, {n for n in b if b[n].code_version != a[n].code_version}


def set_level(level, field, value):
    return lambda d: d["levels"][level - 1].__setitem__(field, value)


def set_train(level, field, value):
    return lambda d: (d["level0"] if level == 0 else d["levels"][level - 1])["train"].__setitem__(field, value)


def rows(cfg):
    """(row of the table, edit, expected rebuilt set) for every level of `cfg`."""
    every = set(build_plan(cfg, "/nonexistent"))
    out = []
    for level in range(1, cfg.num_levels):
        out.append((f"sigma_{level}", set_level(level, "sigma", 3.0), conditioned_on(cfg, level) | EVAL))
        shape = {f"level_{level}_latents", f"level_{level}_model", "level_neighbours"}
        out.append((f"shape c_{level}", set_level(level, "channels", cfg.level(level).channels - 1),
                    shape | conditioned_on(cfg, level) | EVAL))
    for level in range(cfg.num_levels):
        out.append((f"training of level {level}", set_train(level, "lr", 5e-4), {f"level_{level}_model"} | EVAL))
        # rebuilt by continuing the shorter run (tests/test_training.py): a new model all the same
        out.append((f"steps of level {level}", set_train(level, "steps", 80), {f"level_{level}_model"} | EVAL))
    out.append(("sampling steps", lambda d: d["sampling"].__setitem__("steps", 7), EVAL))
    out.append(("level steps", lambda d: d["sampling"].__setitem__("level_steps", [3]), EVAL))
    # level 1 becomes a cascade's low-resolution image (a pixel kind; the semantic level 2 stays above it)
    out.append(("kind of level 1", lambda d: d["levels"][0].update(kind="cascade", pool=8, channels=3),
                {"level_1_latents", "level_1_model", "level_neighbours"} | conditioned_on(cfg, 1) | EVAL))
    out.append(("guidance", lambda d: d["sampling"].__setitem__("guidance", [0.0, 1.0]), EVAL))
    out.append(("variations", lambda d: d["variations"].__setitem__("seeds", 3), {"variations"}))
    out.append(("encoder", lambda d: d["encoder"].__setitem__("input_size", 96), every - {"images", "reference_stats"}))
    out.append(("dataset", lambda d: d["dataset"].__setitem__("max_images", 200), every))
    return out


@pytest.mark.parametrize("conditioning", ["non_markov", "markov"])
def test_every_row_of_the_spec_table(conditioning, tmp_path):
    cfg = tiny(conditioning)
    for row, edit, expected in rows(cfg):
        rebuilt, stale = changes(cfg, edited(cfg, edit), tmp_path)
        assert rebuilt == expected, row
        assert stale == expected, row  # the UI shows exactly what a rerun will rebuild


def test_the_rules_differ_between_conditioning_schemes():
    assert conditioned_on(tiny("non_markov"), 2) == {"level_0_model", "level_1_model"}
    assert conditioned_on(tiny("markov"), 2) == {"level_1_model"}


def test_experiments_differing_only_in_L_or_sigma_share_features_svd_and_latents(tmp_path):
    cfg = tiny("non_markov")
    base = build_plan(cfg, tmp_path)
    shared = ["images", "encoder_features", "svd"]
    def keep_levels(n):  # and the guidance weights of the levels kept (one per level at most)
        return lambda d: d.update(levels=d["levels"][:n], sampling={**d["sampling"], "guidance": d["sampling"]["guidance"][:n + 1]})

    for edit in (keep_levels(1), keep_levels(0), set_level(1, "sigma", 0.0), set_level(2, "sigma", 0.0)):
        other = build_plan(edited(cfg, edit), tmp_path)
        latents = [n for n in other if n.endswith("_latents")]
        assert all(other[n].fingerprint == base[n].fingerprint for n in shared + latents)
        assert all(other[n].path == base[n].path for n in shared + latents)  # one copy on disk
