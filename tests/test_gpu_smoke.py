"""benchmarks/gpu_smoke.sh's check and configs on the CPU: the check that every heavy stage's metadata names the
expected device (on fakes, and on the tiny config's artifacts, expecting cpu), and the configs its `prepare` writes.
The script's whole dry run (`bash benchmarks/gpu_smoke.sh --dry-run`) takes minutes: it is run by hand."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_stage(kind: str, meta: dict | None, fingerprint: str):
    artifact = SimpleNamespace(is_complete=lambda: meta is not None, metadata=lambda: meta)
    return SimpleNamespace(kind=kind, fingerprint=fingerprint, artifact=artifact)


def test_check_names_every_heavy_stage_that_fails(smoke):
    plan = {
        "images": fake_stage("images", {"seconds": 1.0}, "a"),  # light: no device needed
        "encoder_features": fake_stage("features", {"device": "cuda:0", "precision": "bfloat16", "seconds": 2.0}, "b"),
        "level_0_latents": fake_stage("vae_latents", {"device": "cuda", "seconds": 3.0}, "c"),
        "level_0_model": fake_stage("models", {"device": "cpu", "precision": "float32"}, "d"),
        "samples": fake_stage("samples", {"seconds": 4.0}, "e"),
        # the evaluation's `precision` is the metric: its Inception's precision is shown
        "evaluation": fake_stage("evaluation", {"device": "cuda", "precision": 0.5, "inception_precision": "float32"},
                                 "f"),
        "variations": fake_stage("variations", None, "g"),
        "a_new_kind": fake_stage("new_kind", {}, "h"),  # a kind added later is checked
    }
    rows, failures = smoke.stage_rows(plan, "cuda", "pixels", set())
    assert failures == ["pixels: level_0_model ran on cpu, not cuda",
                        "pixels: samples (samples) records no `device` in its metadata",
                        "pixels: variations was not built",
                        "pixels: a_new_kind (new_kind) records no `device` in its metadata"]
    verdicts = {r["stage"]: r["verdict"] for r in rows}
    assert verdicts == {"images": "-", "encoder_features": "ok", "level_0_latents": "ok",
                        "level_0_model": "WRONG DEVICE", "samples": "NO DEVICE", "evaluation": "ok",
                        "variations": "NOT BUILT", "a_new_kind": "NO DEVICE"}
    assert next(r for r in rows if r["stage"] == "evaluation")["precision"] == "float32"
    # a stage listed under an earlier config (same fingerprint) is not listed again
    again, _ = smoke.stage_rows({"images": plan["images"], "samples2": fake_stage("samples", {"device": "cuda"}, "x")},
                                "cuda", "vae", {"a"})
    assert [r["stage"] for r in again] == ["samples2"]


def test_prepare_writes_configs_that_validate(smoke, tmp_path, monkeypatch):
    import yaml

    import scale  # on the path once gpu_smoke is loaded
    from pipeline.config import load_config

    real = scale.make_dataset
    monkeypatch.setattr(scale, "make_dataset", lambda folder, n, size: real(folder, 24, size))  # not 4,000 here
    monkeypatch.setattr(scale, "make_vae", lambda folder: folder.mkdir() or folder)  # the configs only name it
    for device, steps in (("cuda", 200), ("cpu", 10)):
        work = tmp_path / device
        work.mkdir()
        for name, data in smoke.smoke_configs(device, work, steps).items():
            (work / f"{name}.yaml").write_text(yaml.safe_dump(data))
            cfg = load_config(work / f"{name}.yaml")
            assert cfg.compute.device == device and cfg.dataset.source == "folder"
            assert all(cfg.train_config(level).steps == steps for level in range(cfg.num_levels))
            assert cfg.level0.space == ("vae" if name == "vae" else "pixels")
        if device == "cuda":  # configs/emoji_gpu.yaml's models
            assert cfg.train_config(0).size == "S" and cfg.train_config(0).precision == "bfloat16"


def test_tiny_plan_says_cpu(smoke, tiny_run):
    """The dry run's check against the tiny config's artifacts (built once per session by conftest's tiny_run)."""
    from pipeline.plan import build_plan

    rows, failures = smoke.stage_rows(build_plan(tiny_run["cfg"], tiny_run["home"]), "cpu", "tiny", set())
    smoke.print_table(rows)
    assert not failures, "\n".join(failures)
    assert {r["stage"] for r in rows if r["heavy"]} >= {"encoder_features", "level_0_model", "samples",
                                                         "reference_stats", "evaluation", "variations"}
