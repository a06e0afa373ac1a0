"""Returning a config value to an earlier one restores the earlier artifacts without recompute, as the UI shows it.

On a copy of the session's tiny run: materialize into a real instance, edit the sampling steps, and read the
UI's staleness in-process (the webserver's GraphQL schema, no server: assets.stale.in_process) after each step:
the edit marks stale what it rebuilds; once the edited config is materialized, reverting marks the same assets
stale again (against their latest materialization, the edited one); materializing the original config again
is a cache hit on every asset, and everything reads fresh. What the edit built survives gc while it is recent.
"""
import json
import shutil
import time
from pathlib import Path

import yaml
from dagster import AssetKey, DagsterInstance

from assets import stale
from assets.gc_instance import recent_references
from assets.testing import run_assets
from pipeline import gc
from pipeline.cache import MARKER, tree_bytes
from pipeline.config import PROJECT_ROOT, load_config
from pipeline.plan import build_plan


def metadata(result, names) -> dict[str, dict]:
    return {a: {k: v.value for k, v in result.asset_materializations_for_node(a)[0].metadata.items()} for a in names}


def test_reverting_a_config_value_restores_its_artifacts_without_recompute(tiny_run, tmp_path, monkeypatch):
    home = tmp_path / "nested_home"
    shutil.copytree(tiny_run["home"], home)  # a copy: the session's run, its table among it, stays as it is
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home)
    config = tmp_path / "tiny.yaml"
    original = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    edit = {**original, "sampling": {**original["sampling"], "steps": original["sampling"]["steps"] - 1}}
    config.write_text(yaml.safe_dump(original))
    for k, v in {"NESTED_CONFIG": config, "NESTED_HOME": home, "DAGSTER_HOME": dagster_home}.items():
        monkeypatch.setenv(k, str(v))

    before = load_config(config)
    plan, edited_plan = build_plan(before, home), None
    everything = sorted(plan)

    with DagsterInstance.get() as instance, stale.in_process(read_only=False) as ui:
        ui.wait_loaded()
        first = run_assets(before, home, instance)
        assert first.success and {a: m["cache"] for a, m in metadata(first, everything).items()} == \
            {a: "hit" for a in everything}  # the copied artifacts
        assert ui.unsynced() == {}

        config.write_text(yaml.safe_dump(edit))
        ui.reload_location()
        after = load_config(config)
        edited_plan = build_plan(after, home)
        moved = {a for a in plan if plan[a].code_version != edited_plan[a].code_version}
        assert moved >= {"samples", "evaluation"} and not any(a.endswith(("_model", "_latents")) for a in moved)
        assert moved == {a for a in plan if plan[a].fingerprint != edited_plan[a].fingerprint}
        assert ui.unsynced() == {a: "STALE" for a in moved}
        rebuilt = run_assets(after, home, instance, names=sorted(moved))
        assert rebuilt.success and {a: m["cache"] for a, m in metadata(rebuilt, moved).items()} == \
            {a: "miss" for a in moved}
        assert ui.unsynced() == {}

        config.write_text(yaml.safe_dump(original))  # back to the earlier value
        ui.reload_location()
        assert ui.unsynced() == {a: "STALE" for a in moved}  # the latest materializations are the edited ones
        restored = run_assets(load_config(config), home, instance)
        shown = metadata(restored, everything)
        assert restored.success and {a: m["cache"] for a, m in shown.items()} == {a: "hit" for a in everything}
        assert ui.unsynced() == {}

    # Every asset shows its artifact's size on disk.
    for a, m in shown.items():
        assert m["bytes_on_disk"] == tree_bytes(plan[a].path) > 0 and m["size_on_disk"].endswith("B"), a

    # The edited experiment's artifacts are no config's now, but recent materializations keep them.
    ref = gc.referenced([config], home)
    recent = recent_references(time.time() - 3600, dagster_home)
    items = {it.entry.path: it for it in gc.survey(home, gc.Keep(ref.paths, recent))[0]}
    assert all(items[edited_plan[a].path].state == gc.KEPT for a in moved)
    assert all(items[plan[a].path].state == gc.IN_USE for a in everything)
    assert {edited_plan[a].path for a in moved} <= {it.entry.path for it in gc.orphans(home, gc.Keep(ref.paths))}


def test_training_reports_the_model_size_on_disk(tiny_run):
    """The training process (assets/train_entry.py) reports the same metadata as every asset, size included."""
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    for level in range(tiny_run["cfg"].num_levels):
        stage = plan[f"level_{level}_model"]
        (first,) = tiny_run["instance"].fetch_materializations(AssetKey(stage.asset), limit=1, ascending=True).records
        md = first.asset_materialization.metadata
        assert md["cache"].value == "miss"  # trained in the Pipes process, which reported this
        marker = stage.path / MARKER
        recorded = sum(size for size, _ in json.loads(marker.read_text())["files"].values())
        assert md["bytes_on_disk"].value == recorded + marker.stat().st_size > 0
        assert Path(md["path"].value) == stage.path
