"""Per-level training on configs/tiny.yaml: loss, condition dropout, checkpoints, resume, torchrun, Pipes."""
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from assets.training import train_command
from assets.testing import run_assets
from pipeline.checkpoint import CheckpointError, save_checkpoint
from pipeline.config import parse_config
from pipeline.plan import build_plan
from pipeline.model_io import load_level_model
from pipeline.train import drop_mask, step_generator, train_level, work_dir


def with_level_train(cfg, level, **changes):
    data = cfg.model_dump(mode="json")
    train = data["level0"]["train"] if level == 0 else data["levels"][level - 1]["train"]
    train.update(changes)
    return parse_config(data)


def test_condition_dropout_happens_at_the_configured_rate():
    for p in (0.0, 0.1, 0.5, 1.0):
        rate = drop_mask(200_000, p, torch.Generator().manual_seed(0)).float().mean().item()
        assert rate == pytest.approx(p, abs=0.005)


def test_step_randomness_depends_on_the_step_only():
    a = torch.rand(4, generator=step_generator(0, 1, 0, 7))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 1, 0, 7)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 1, 0, 8)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 1, 1, 7)))  # another rank


def test_training_metadata_and_falling_loss(tiny_run):
    md = tiny_run["result"].asset_materializations_for_node("level_0_model")[0].metadata
    curve = md["loss_curve"]
    assert "data:image/png;base64," in curve.value
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    meta = plan["level_0_model"].artifact.metadata()
    losses = [l for _, l in meta["loss_curve"]]
    assert losses[-1] < 0.5 * losses[0]  # the conv UNet learns pixels quickly
    assert md["params_M"].value > 0 and md["gflops_per_forward"].value > 0
    assert meta["condition_levels"] == [1, 2] and meta["steps"] == 40


def test_trained_model_loads_from_safetensors(tiny_run):
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    model, spec = load_level_model(plan["level_1_model"].path)
    assert spec["in_shape"] == [16, 4, 4] and spec["cond_shapes"] == [[8, 2, 2]]
    x = torch.randn(2, 16, 4, 4)
    out = model(x, torch.tensor([10, 500]), [torch.randn(2, 8, 2, 2)])
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_killed_training_resumes_from_its_last_checkpoint(tiny_run):
    cfg = with_level_train(tiny_run["cfg"], 2, steps=3000, batch_size=4, checkpoint_every=50, log_every=50)
    home = tiny_run["home"]
    plan = build_plan(cfg, home)
    stage = plan["level_2_model"]
    work = work_dir(stage)
    proc = subprocess.Popen(train_command(cfg, plan, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(work.glob("ckpt-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(work.glob("ckpt-*"))
    assert saved and not stage.artifact.is_complete()
    first = int(saved[-1].name.split("-")[1])

    result = run_assets(cfg, home, names=["level_2_model"])
    md = result.asset_materializations_for_node("level_2_model")[0].metadata
    assert md["cache"].value == "miss"
    resumed = md["resumed_from_step"].value
    assert resumed >= first > 0
    curve = stage.artifact.metadata()["loss_curve"]
    assert [s for s, _ in curve] == list(range(50, 3001, 50))  # the step counter continued, no restart
    assert not work.exists()  # checkpoints are cleaned up once the model is published


def test_training_process_trains_the_plan_it_is_given(tiny_run, monkeypatch):
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR

    from assets import train_entry

    cfg = with_level_train(tiny_run["cfg"], 2, steps=10, log_every=5)
    plan = build_plan(cfg, tiny_run["home"])
    cmd = train_command(cfg, plan, 2)

    def rebuilt(*args, **kwargs):
        raise AssertionError("the training process rebuilt the plan")

    monkeypatch.setattr("pipeline.plan.build_plan", rebuilt)
    monkeypatch.setattr("pipeline.train_cli.build_plan", rebuilt)
    monkeypatch.delenv(DAGSTER_PIPES_CONTEXT_ENV_VAR, raising=False)
    train_entry.main(cmd[cmd.index("--run-file"):])
    stage = plan["level_2_model"]
    assert stage.artifact.is_complete() and stage.artifact.metadata()["steps"] == 10


def test_corrupt_or_missing_checkpoint_is_an_error_not_a_restart(tiny_run, tmp_path):
    cfg = with_level_train(tiny_run["cfg"], 2, steps=45, checkpoint_every=15)
    stage = build_plan(cfg, tiny_run["home"])["level_2_model"]
    work = work_dir(stage)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    ckpt = save_checkpoint(work, 15, model, model, opt, {"curve": []})
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    plan = build_plan(cfg, tiny_run["home"])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        train_level(cfg, plan, 2)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        train_level(cfg, plan, 2)
    assert not stage.artifact.is_complete()
    import shutil
    shutil.rmtree(work)


def test_torchrun_with_gloo_trains_to_the_end(tiny_run):
    cfg = with_level_train(tiny_run["cfg"], 2, steps=20, nproc=2, log_every=5)
    cmd = train_command(cfg, build_plan(cfg, tiny_run["home"]), 2)
    assert "torch.distributed.run" in cmd and "--nproc-per-node=2" in cmd
    from torch.distributed.run import get_args_parser  # torchrun's own parser hands our flags through unchanged
    args = get_args_parser().parse_args(cmd[cmd.index("torch.distributed.run") + 1:])
    assert args.training_script == "assets.train_entry" and args.training_script_args == cmd[cmd.index("--run-file"):]
    result = run_assets(cfg, tiny_run["home"], names=["level_2_model"])  # Pipes launches torchrun
    md = result.asset_materializations_for_node("level_2_model")[0].metadata
    assert md["world_size"].value == 2 and md["steps"].value == 20
    model, _ = load_level_model(build_plan(cfg, tiny_run["home"])["level_2_model"].path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cost_table_against_the_trained_models(tiny_run):
    from pipeline.costs import cost_table

    table = cost_table(tiny_run["cfg"])
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    from models.denoiser import gflops_per_step

    for row in table["levels"]:  # meta-device counts equal the counts on the real (CPU) trained models
        model, spec = load_level_model(plan[f"level_{row['level']}_model"].path)
        real = gflops_per_step(model, tuple(spec["in_shape"]), [tuple(s) for s in spec["cond_shapes"]])
        assert row["gflops_per_forward"] == pytest.approx(real, rel=1e-6)
        assert row["params"] == plan[f"level_{row['level']}_model"].artifact.metadata()["params"]
    assert table["levels"][0]["gflops_per_forward"] > table["baseline"]["gflops_per_forward"]
    assert table["relative_to_baseline"] == pytest.approx(
        sum(r["gflops_per_forward"] for r in table["levels"]) / table["baseline"]["gflops_per_forward"])
    md = tiny_run["result"].asset_materializations_for_node("level_0_model")[0].metadata
    assert md["nested_vs_L1_gflops"].value == pytest.approx(table["relative_to_baseline"], rel=1e-3)
    assert "L = 1 baseline" in md["cost_table"].value


def test_level0_as_a_vae_latent(tiny_run, tmp_path):
    from diffusers import AutoencoderKL

    from pipeline import gc
    from pipeline.data import iter_pixels
    from pipeline.level_kinds import level_shape
    from pipeline.levels import read_latents
    from pipeline.vae_latents import encode_vae

    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    data = tiny_run["cfg"].model_dump(mode="json")
    data["level0"].update(space="vae", vae=str(tmp_path / "vae"))
    data["level0"]["train"].update(steps=10)
    cfg = parse_config(data)
    plan = build_plan(cfg, tiny_run["home"])
    assert "images" in plan["level_0_latents"].inputs and "level_0_latents" in plan["level_0_model"].inputs
    result = run_assets(cfg, tiny_run["home"], names=["level_0_latents", "level_0_model"])
    assert result.success
    # the latents are an asset with its checks, in the level_0 group, saying where they were encoded
    md = result.asset_materializations_for_node("level_0_latents")[0].metadata
    assert md["device"].value == "cpu" and md["stored_dtype"].value == "float16" and md["num_train"].value > 0
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert all(checks.values()) and {name for asset, name in checks if asset == "level_0_latents"} == {
        "files_intact", "consistent", "shards_match_manifest"}
    # stored in float16, equal to a float32 encode of the same images up to float16's rounding
    keys, z, _ = read_latents(plan["level_0_latents"].path, "train")
    assert z.dtype == np.float16 and z.shape[1:] == (4, 8, 8)
    pixels = torch.stack([torch.from_numpy(x) for _, x, _ in itertools.islice(iter_pixels(plan["images"].path), 4)])
    exact = encode_vae(pixels, cfg.level0.vae, cfg.level0.vae_scale)
    np.testing.assert_allclose(z[:4].astype(np.float32), exact.numpy(), atol=2e-3, rtol=2e-3)
    _, spec = load_level_model(plan["level_0_model"].path)
    assert spec["in_shape"] == [4, 8, 8]  # 16 px through a 2x-downsampling VAE with 4 latent channels
    assert level_shape(cfg, 0) == (4, 8, 8)
    # gc knows the kind: the latents are in use while a config refers to them
    config = tmp_path / "vae.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert plan["level_0_latents"].path in gc.referenced([config], tiny_run["home"]).paths
    assert "vae_latents" in gc.kinds()


def test_ema_warms_up_and_survives_a_checkpoint(tmp_path):
    from torch.optim.swa_utils import AveragedModel

    from pipeline.checkpoint import load_checkpoint
    from pipeline.train import update_ema

    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, use_buffers=True)
    with torch.no_grad():
        model.weight.fill_(0.0)
        update_ema(ema, model, 0.999)  # the first update copies
        model.weight.fill_(1.0)
        update_ema(ema, model, 0.999)  # n = 1: decay min(0.999, 2/11) -> moves 9/11 of the way
    assert ema.module.weight.item() == pytest.approx(9 / 11)
    opt = torch.optim.AdamW(model.parameters())
    ckpt = save_checkpoint(tmp_path, 2, model, ema, opt, {"curve": []})
    restored = AveragedModel(torch.nn.Linear(1, 1, bias=False), use_buffers=True)
    load_checkpoint(ckpt, torch.nn.Linear(1, 1, bias=False), restored, torch.optim.AdamW(model.parameters()))
    assert int(restored.n_averaged) == 2 and restored.module.weight.item() == pytest.approx(9 / 11)
    assert restored.n_averaged.device.type == "cpu"  # read every step: on a GPU it must not wait for the device


def test_ema_update_equals_averaged_models_own_update_with_the_warm_up():
    """update_ema is AveragedModel.update_parameters with the warm-up decay, minus its per-step device read:
    the same values, bit for bit, over parameters and buffers."""
    from torch.optim.swa_utils import AveragedModel

    from pipeline.train import update_ema

    def warm_up(averaged, current, n):
        n = float(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(0.99, (1.0 + n) / (10.0 + n)))

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    model.register_buffer("running", torch.zeros(4))  # a float buffer is averaged like a weight
    ours, theirs = AveragedModel(model, use_buffers=True), AveragedModel(model, multi_avg_fn=warm_up, use_buffers=True)
    for _ in range(30):
        with torch.no_grad():
            for t in (*model.parameters(), model.running):
                t.add_(torch.randn_like(t))
        update_ema(ours, model, 0.99)
        theirs.update_parameters(model)
    assert int(ours.n_averaged) == int(theirs.n_averaged) == 30
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.equal(ours.module.running, model.running)  # an average, not a copy

    # an integer buffer (BatchNorm's step counter) cannot be averaged, and AveragedModel's update fails on it
    bn = torch.nn.BatchNorm1d(4)
    ema = AveragedModel(bn, use_buffers=True)
    for _ in range(3):
        bn(torch.randn(8, 4))
        update_ema(ema, bn, 0.99)
    assert int(ema.module.num_batches_tracked) == 3 and ema.module.running_mean.abs().sum() > 0


def test_compile_is_a_compute_setting_gpu_only_by_default(tiny_cfg):
    from pipeline.fingerprints import config_fingerprint
    from pipeline.train import use_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert use_compile("auto", gpu) and not use_compile("auto", cpu)
    assert use_compile(True, cpu) and not use_compile(False, gpu)
    forced = tiny_cfg.model_copy(update={"compute": tiny_cfg.compute.model_copy(update={"compile": True})})
    assert config_fingerprint(forced) == config_fingerprint(tiny_cfg)  # how it runs, not what it computes
    with pytest.raises(ValueError, match="compile"):
        parse_config({**tiny_cfg.model_dump(mode="json"), "compute": {"compile": "sometimes"}})


def test_compiled_training_publishes_the_same_kind_of_model(tiny_run, tmp_path, monkeypatch):
    """compute.compile: true wraps the training step in torch.compile (dynamo's eager backend here, to keep the
    test fast); the checkpoint and the published weights are the plain module's, and they load and run."""
    import shutil

    calls = []
    real_compile = torch.compile

    def compile_eagerly(net, **kwargs):
        calls.append(type(net).__name__)
        return real_compile(net, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    cfg = with_level_train(tiny_run["cfg"], 2, steps=12, log_every=4, checkpoint_every=6)
    cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"compile": True})})
    home = tmp_path / "home"
    shutil.copytree(tiny_run["home"], home)
    plan = build_plan(cfg, home)
    stage = plan["level_2_model"]
    # every model: a shorter run of these settings (another test's) would be continued, not trained from step 0
    shutil.rmtree(stage.path.parent, ignore_errors=True)
    meta = train_level(cfg, plan, 2)
    assert calls and meta["compiled"] and meta["cache"] == "miss" and meta["steps"] == 12
    assert [s for s, _ in meta["loss_curve"]] == [4, 8, 12]
    model, _ = load_level_model(stage.path)
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    out = model(torch.randn(2, 8, 2, 2), torch.tensor([3, 700]))
    assert out.shape == (2, 8, 2, 2) and torch.isfinite(out).all()


def test_sampling_cost_counts_the_unconditional_pass_where_guidance_runs_it(tiny_cfg):
    from pipeline.costs import cost_table

    def sampling(guidance, **change):
        cfg = tiny_cfg.model_copy(update={**change, "sampling": tiny_cfg.sampling.model_copy(update={"guidance": guidance})})
        return cost_table(cfg)

    steps = tiny_cfg.sampling.steps
    off = sampling([0.0, 0.0, 0.0])
    per_level = [r["gflops_per_forward"] for r in off["levels"]]
    assert off["sampling_gflops_per_image"] == pytest.approx(steps * sum(per_level))
    assert off["sampling_relative_to_baseline"] == pytest.approx(off["relative_to_baseline"])
    # guidance at level 0 doubles level 0; at the unconditional top level it costs nothing extra
    on = sampling([0.1, 0.0, 0.5])
    assert on["sampling_gflops_per_image"] == pytest.approx(steps * (2 * per_level[0] + per_level[1] + per_level[2]))
    # with labels the top level and the L = 1 baseline have something to drop too
    labelled = sampling([0.1, 0.0, 0.5], class_conditional=True)
    rows = [r["gflops_per_forward"] for r in labelled["levels"]]
    assert labelled["sampling_gflops_per_image"] == pytest.approx(steps * (2 * rows[0] + rows[1] + 2 * rows[2]))
    assert labelled["baseline"]["sampling_gflops_per_image"] == pytest.approx(
        2 * steps * labelled["baseline"]["gflops_per_forward"])


def test_native_bf16_is_read_from_the_cpu_flags():
    from pipeline.runtime import cpu_has_native_bf16

    assert cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f avx512_bf16") is True
    assert cpu_has_native_bf16("flags : fpu sse2 avx2 amx_bf16 amx_tile") is True
    assert cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f") is False  # AVX512 alone still emulates bf16


def test_an_old_model_json_without_its_schedule_still_samples(tiny_run, tmp_path):
    import json
    import shutil

    from pipeline.model_io import MODEL_JSON, make_scheduler, spec_scheduler
    from pipeline.sample import sample_level

    old = tmp_path / "model"
    shutil.copytree(build_plan(tiny_run["cfg"], tiny_run["home"])["level_2_model"].path, old)
    spec = json.loads((old / MODEL_JSON).read_text())
    schedule = spec.pop("scheduler")  # as written before the schedule was saved
    (old / MODEL_JSON).write_text(json.dumps(spec))
    model, spec = load_level_model(old)
    assert spec_scheduler(spec) == schedule  # derived from its training settings
    assert dict(make_scheduler(schedule, "dpm").config) == dict(make_scheduler(spec_scheduler(spec), "dpm").config)
    x = sample_level(model, spec, [], 2, 3, 0.0, torch.Generator().manual_seed(0))
    assert x.shape == (2, *spec["in_shape"]) and torch.isfinite(x).all()


def test_a_longer_run_continues_the_published_shorter_one_bit_for_bit(tiny_run, tmp_path):
    import shutil

    from safetensors.torch import load_file

    home = Path(shutil.copytree(tiny_run["home"], tmp_path / "home", ignore=shutil.ignore_patterns(".locks")))
    full = build_plan(tiny_run["cfg"], home)["level_2_model"]  # the tiny run's own 40 steps, trained from step 0
    kept = full.path.rename(tmp_path / "kept")
    shutil.rmtree(full.path.parent)  # shorter runs other tests of the session left: start from nothing
    half = with_level_train(tiny_run["cfg"], 2, steps=20, log_every=5)  # the log interval is no part of the path
    assert build_plan(half, home)["level_2_model"].trajectory == full.trajectory
    assert run_assets(half, home, names=["level_2_model"]).success
    assert build_plan(half, home)["level_2_model"].artifact.metadata()["continued_from"] is None

    result = run_assets(tiny_run["cfg"], home, names=["level_2_model"])
    md = result.asset_materializations_for_node("level_2_model")[0].metadata
    assert md["cache"].value == "miss"
    meta = full.artifact.metadata()
    assert meta["continued_from"]["steps"] == 20 and meta["steps"] == 40
    assert [s for s, _ in meta["loss_curve"]][:4] == [5, 10, 15, 20]  # the shorter run's curve goes on
    for name in ("model.safetensors", "ema.safetensors"):
        ours, scratch = load_file(str(full.path / name)), load_file(str(kept / name))
        assert ours.keys() == scratch.keys() and all(torch.equal(ours[k], scratch[k]) for k in ours), name

    # Another learning rate is another path: nothing to continue, it trains from step 0
    other = with_level_train(tiny_run["cfg"], 2, steps=60, lr=5e-4)
    assert build_plan(other, home)["level_2_model"].trajectory != full.trajectory
    assert run_assets(other, home, names=["level_2_model"]).success
    assert build_plan(other, home)["level_2_model"].artifact.metadata()["continued_from"] is None
