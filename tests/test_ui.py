"""End to end through a real `dagster dev`: what the UI marks stale after a config edit, and what reruns.

The UI's stale status is public only through GraphQL, so this drives the webserver as the UI does: launch,
edit the YAML, reload the code location, read `staleStatus`, launch the stale assets, read the `cache`
metadata of each materialization; then it looks at the asset graph page in headless Chromium.
"""
import shutil
import subprocess
import urllib.parse
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from assets import launch, stale
from assets.ui_client import dagster_webserver
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def unsynced(ui) -> dict[str, str]:
    return {a: info["status"] for a, info in ui.asset_staleness().items() if info["status"] != "FRESH"}


def materialize(ui, keys, timeout=1200) -> dict[str, str]:
    """Launch one run of exactly `keys`, wait for success; each materialized asset -> its `cache` flag."""
    run_id = ui.launch_assets(sorted(keys))
    ui.wait_for_run(run_id, timeout)
    return {a: md["cache"] for a, md in ui.materialization_metadata(run_id).items()}


def sigma_dependents(cfg, level: int) -> set[str]:
    """A sigma_l edit retrains the models conditioned on level l, then samples, evaluation and variations."""
    models = {f"level_{j}_model" for j in range(cfg.num_levels) if level in cfg.conditions_of(j)}
    return models | {"samples", "evaluation", "variations"}


def screenshot_asset_graph(ui, png: Path) -> None:
    groups = sorted({n["groupName"] for n in ui.query("{ assetNodes { groupName } }")["assetNodes"]})
    # The global lineage page draws groups collapsed to boxes; `expanded` opens them (ids as the UI writes them).
    expanded = ",".join(f"global@global:{g}" for g in groups)
    url = f"{ui.url}/asset-groups?" + urllib.parse.urlencode({"expanded": expanded})
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}", "--window-size=1400,900",
           "--virtual-time-budget=15000", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and png.is_file(), f"chromium failed on {url}:\n{done.stderr[-2000:]}"


def assert_graph_drawn(png: Path) -> None:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    drawn = (np.abs(rgb - background).sum(-1) > 30).mean()
    # Fresh asset nodes are filled light green: a blank page, a spinner or collapsed groups have (almost) none.
    green = ((rgb[..., 1] > rgb[..., 0] + 10) & (rgb[..., 1] > rgb[..., 2] + 5)).mean()
    assert drawn > 0.05 and len(colours) > 500 and green > 0.01, \
        f"{png} looks blank: {drawn:.1%} drawn, {len(colours)} colours, {green:.1%} fresh-node green"


@pytest.mark.ui
def test_ui_marks_exactly_the_assets_a_sigma_edit_rebuilds(tmp_path, capsys, monkeypatch):
    config = tmp_path / "tiny.yaml"
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["sampling"]["reference_images"] = 60  # the FID reference is not what this test is about: keep it quick
    config.write_text(yaml.safe_dump(data))
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", dagster_home)  # telemetry off
    env = {"NESTED_CONFIG": str(config), "NESTED_HOME": str(tmp_path / "nested_home"),
           "DAGSTER_HOME": str(dagster_home)}

    with dagster_webserver(env=env, log_path=tmp_path / "dagster_dev.log") as ui:
        ui.set_nux_seen()
        everything = set(ui.asset_staleness())
        assert materialize(ui, everything) == {a: "miss" for a in everything}
        assert unsynced(ui) == {}

        cfg = load_config(config)
        coarsest = cfg.num_levels - 1
        data = yaml.safe_load(config.read_text())
        assert data["levels"][coarsest - 1]["sigma"] == 1.0
        data["levels"][coarsest - 1]["sigma"] = 2.0
        config.write_text(yaml.safe_dump(data))
        ui.reload_location()

        expected = sigma_dependents(load_config(config), coarsest)
        staleness = ui.asset_staleness()
        assert {a for a, info in staleness.items() if info["status"] != "FRESH"} == expected
        assert all(info["status"] == "STALE" for a, info in staleness.items() if a in expected)
        # Each is stale for its own code version (the config lineage); Dagster itself would only flag the
        # models' children after the models were rerun.
        for a in expected:
            assert {"category": "CODE", "reason": "has a new code version", "key": a, "dependency": None} \
                in staleness[a]["causes"], staleness[a]

        # The command-line view agrees: rebuild the models conditioned on the coarsest level, and downstream.
        assert stale.main(["--url", ui.url]) == 0
        models = sorted(a for a in expected if a.endswith("_model"))
        assert f"--select '{','.join(m + '*' for m in models)}'" in capsys.readouterr().out

        # The deployment guide's check (docs/deploy.md): one run of the given assets through the webserver.
        assert launch.main(["--url", ui.url, *sorted(expected)]) == 0
        out = capsys.readouterr().out
        assert all(f"  {a:<20} cache miss" in out for a in expected), out
        assert unsynced(ui) == {}
        assert materialize(ui, everything) == {a: "hit" for a in everything}

        # Without a webserver, the command-line view reads the same instance in-process.
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        assert stale.main([]) == 0
        out = capsys.readouterr().out
        assert "Everything is fresh" in out and all(f"{a} " in out for a in everything)

        if shutil.which("chromium") is None:
            warnings.warn("chromium is not on PATH: the asset graph screenshot was not taken "
                          "(apt-get install chromium)")
            return
        png = tmp_path / "asset_graph.png"
        screenshot_asset_graph(ui, png)
        assert_graph_drawn(png)
        with capsys.disabled():
            print(f"\nasset graph screenshot: {png}")
