"""`python -m assets.launch`'s exit status and what it prints, against a webserver's answers (the real webserver
path runs in tests/test_ui.py)."""
import pytest

from assets import launch
from assets.ui_client import DagsterUI, RunFailed

LOADED = [{"name": "nested-diffusion", "loadStatus": "LOADED", "locationOrLoadError": {"__typename": "RepositoryLocation"}}]


@pytest.fixture
def webserver(monkeypatch):
    """DagsterUI with the webserver's answers replaced: `state` says how the location loads and the run ends."""
    state = {"locations": LOADED, "status": "SUCCESS", "launched": []}

    def wait_for_run(self, run_id, timeout=600, poll=1.0):
        if state["status"] != "SUCCESS":
            raise RunFailed(f"run {run_id} ended {state['status']}:\n[images] OSError: disk full")
        return "SUCCESS"

    monkeypatch.setattr(DagsterUI, "wait_loaded", lambda self, timeout=180: state["locations"])
    monkeypatch.setattr(DagsterUI, "launch_assets", lambda self, keys, tags=None: state["launched"].append(keys) or "r1")
    monkeypatch.setattr(DagsterUI, "wait_for_run", wait_for_run)
    monkeypatch.setattr(DagsterUI, "materialization_metadata",
                        lambda self, run_id: {k: {"cache": "miss"} for k in state["launched"][-1]})
    return state


def test_a_successful_run_prints_each_assets_cache_flag(webserver, capsys):
    assert launch.main(["--url", "http://ui:3000", "images", "encoder_features"]) == 0
    out = capsys.readouterr().out
    assert webserver["launched"] == [["encoder_features", "images"]]
    assert "http://ui:3000/runs/r1" in out and "images               cache miss" in out


def test_a_failed_run_prints_its_errors_and_exits_1(webserver, capsys):
    webserver["status"] = "FAILURE"
    assert launch.main(["images"]) == 1
    assert "OSError: disk full" in capsys.readouterr().err


def test_a_code_location_that_does_not_load_exits_2_without_launching(webserver, capsys):
    webserver["locations"] = [{"name": "nested-diffusion", "loadStatus": "LOADED", "locationOrLoadError": {
        "__typename": "PythonError", "message": "ModuleNotFoundError: No module named 'assets'", "stack": []}}]
    assert launch.main(["images"]) == 2
    assert "No module named 'assets'" in capsys.readouterr().err and webserver["launched"] == []
