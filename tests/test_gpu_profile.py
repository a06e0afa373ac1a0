"""The GPU profile's CPU-sized parts: benchmarks/train_throughput.py and `benchmarks/gpu_profile.sh --dry-run`."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--size", "tiny", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--device", "cpu",
        "--precision", "float32"]


def throughput_module():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_official(root: Path, uvit_body: str) -> Path:
    """A checkout shaped like github.com/baofff/U-ViT: libs/uvit.py with a relative import of libs/timm.py."""
    (root / "libs").mkdir(parents=True)
    (root / "libs" / "__init__.py").write_text("")
    (root / "libs" / "timm.py").write_text("import torch.nn as nn\nLayer = nn.Conv2d\n")
    (root / "libs" / "uvit.py").write_text(uvit_body)
    return root


OFFICIAL_STUB = """
from .timm import Layer
import torch.nn as nn

class UViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.,
                 qkv_bias=False, mlp_time_embed=False, num_classes=-1):
        super().__init__()
        self.kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           mlp_time_embed=mlp_time_embed, num_classes=num_classes)
        self.conv = Layer(in_chans, in_chans, 3, padding=1)

    def forward(self, x, timesteps):
        return self.conv(x)
"""


def test_train_throughput_json(tmp_path):
    mod = throughput_module()
    official = fake_official(tmp_path / "U-ViT", OFFICIAL_STUB)
    out = tmp_path / "out" / "tp.json"
    mod.main([*TINY, "--in-shape", "3", "32", "32", "--patch-size", "2", "--official", str(official), "--out", str(out)])
    result = json.loads(out.read_text())
    for name in ("ours", "official"):
        assert result[name]["images_per_sec"] > 0 and result[name]["sec_per_step"] > 0, name
        assert result[name]["params"] > 0
    assert result["ours_over_official"] > 0
    s = result["settings"]
    assert (s["size"], s["in_shape"], s["patch_size"], s["batch_size"], s["steps"], s["warmup"]) == \
        ("tiny", [3, 32, 32], 2, 4, 2, 1)
    assert (s["precision"], s["compile"], s["device"], s["cond_shapes"]) == ("float32", False, "cpu", [])
    assert result["torch"] and result["device"]
    # the official model got our tiny size's config (models/uvit.py: dim 64, depth 5, 2 heads, mlp ratio 2)
    assert mod.official_uvit(official, "tiny", (3, 32, 32), 2).kwargs == dict(img_size=32, patch_size=2, in_chans=3, embed_dim=64, depth=5, num_heads=2,
                                   mlp_ratio=2, qkv_bias=False, mlp_time_embed=False, num_classes=-1)

    # with the coarser levels fused in, and no official model
    nested = mod.main([*TINY, "--cond-shapes", "32,4,4", "16,2,2"])
    assert nested["settings"]["cond_shapes"] == [[32, 4, 4], [16, 2, 2]] and nested["ours"]["images_per_sec"] > 0
    assert "official" not in nested


def test_official_import_error_is_clear(tmp_path):
    mod = throughput_module()
    official = fake_official(tmp_path / "U-ViT", "import einops_not_installed_here\n" + OFFICIAL_STUB)
    with pytest.raises(SystemExit, match="cannot be imported.*einops_not_installed_here.*pip install einops"):
        mod.main([*TINY, "--official", str(official)])
    with pytest.raises(SystemExit, match="no libs/uvit.py"):
        mod.main([*TINY, "--official", str(tmp_path / "elsewhere")])


def test_gpu_profile_dry_run(tmp_path):
    env = {**os.environ, "SKIP_SETUP": "1", "GPU_PROFILE_OUT": str(tmp_path / "results"), "PYTHON": sys.executable,
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "NESTED_HOME": str(tmp_path / "nested"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "benchmarks/gpu_profile.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipping make setup" in proc.stdout and "skipping nvidia-smi" in proc.stdout
    for name in ("gpu_throughput_dryrun.json", "gpu_throughput_nested_dryrun.json"):
        result = json.loads((tmp_path / "results" / name).read_text())
        assert result["ours"]["images_per_sec"] > 0
        # CPU-sized, at configs/ablation_gpu.yaml's level-0 shape
        assert (result["settings"]["size"], result["settings"]["device"], result["settings"]["in_shape"]) == \
            ("tiny", "cpu", [3, 32, 32])
    assert result["settings"]["cond_shapes"] == [[32, 4, 4], [16, 2, 2]]
    assert str(tmp_path / "results" / "gpu_throughput_dryrun.json") in proc.stdout


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_pipeline_check", ROOT / "benchmarks" / "gpu_pipeline_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_pipeline_check_prepares_a_home_that_trains_elsewhere(tmp_path):
    """`prepare` builds the upstream artifacts and a run file; copied to another path (another machine's), the
    run file is re-rooted there and pipeline.train trains from it without the dataset or a rebuilt plan."""
    import shutil

    from pipeline.train import train_level

    check = gpu_check_module()
    home = tmp_path / "here"
    check.main(["prepare", "--config", str(ROOT / "configs" / "tiny.yaml"), "--steps", "12", "--home", str(home)])
    moved = tmp_path / "there"
    shutil.copytree(home, moved)
    cfg, plan = check.load_run(moved)
    assert {cfg.train_config(level).steps for level in range(cfg.num_levels)} == {12}
    assert all(stage.path.is_relative_to(moved) for stage in plan.values())
    assert plan["level_1_latents"].artifact.is_complete() and not plan["level_2_model"].artifact.is_complete()
    meta = train_level(cfg, plan, 2)
    assert meta["cache"] == "miss" and meta["steps"] == 12 and plan["level_2_model"].artifact.is_complete()
    assert not (home / "models").exists() or not any((home / "models").iterdir())  # the copy trained, not home


def test_gpu_pipeline_check_run_refuses_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check_module().main(["run", "--home", str(tmp_path)])
