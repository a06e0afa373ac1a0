"""The tables of docs/scale.md: storage per stage and GPU-hours per level for configs/imagenet256_mocov3.yaml at
ImageNet-1k scale. Shapes and FLOPs only (models built on the "meta" device, counted by torch.utils.flop_counter,
2 FLOPs per multiply-add); the only measurements are a few PNG encodes, a Blosc compression of synthetic floats
and a WebDataset shard of zeros, on one CPU core. No training; well under a minute.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_plan.py

Everything marked ASSUMPTION below is a stated input, not a measurement: change it here and rerun.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

CONFIG = ROOT / "configs/imagenet256_mocov3.yaml"
N_IMAGES = 1_281_167          # ImageNet-1k train (the folder IMAGENET_TRAIN points at); the config cannot say
PEAK = 989e12                 # ASSUMPTION: H100 SXM bf16 dense peak, FLOP/s (no GPU figure is recorded yet)
MFU = (0.35, 0.40)            # ASSUMPTION: model-FLOPs utilisation range
# ASSUMPTION, the paper's ImageNet-1k recipe (seed 001: "configurations of U-ViT-L", SD-VAE latent 32x32x4,
# U-ViT's defaults): U-ViT-L at every level, 300k steps at global batch 1024 (U-ViT's imagenet256_uvit_large),
# DPM-Solver 50 steps, 50k samples, guidance on every conditioned level.
PAPER = dict(size="L", steps=300_000, batch=1024, sample_steps=50, num_samples=50_000, vae_shape=(4, 32, 32))
GB = 1e9


def count_gflops(fn) -> float:
    from models.denoiser import _CPU_SDPA

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as c:
        fn()
    return c.get_total_flops() / 1e9


def encoder_gflops(cfg) -> tuple[tuple[int, int, int], float]:
    from models.encoder import _create, feature_extractor, probe_features

    with torch.device("meta"):
        f = feature_extractor(_create(cfg.encoder.name).eval(), cfg.encoder.layer)
    s = cfg.encoder.input_size
    return probe_features(cfg.encoder.name, cfg.encoder.layer, s), count_gflops(
        lambda: f(torch.empty(1, 3, s, s, device="meta")))


def vae_gflops(res: int) -> tuple[float, float]:
    """SD-VAE (stabilityai/sd-vae-ft-ema's architecture) encoder and decoder GFLOPs for one res x res image."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4).eval()
    enc = count_gflops(lambda: vae.encode(torch.empty(1, 3, res, res, device="meta")).latent_dist.mean)
    dec = count_gflops(lambda: vae.decode(torch.empty(1, 4, res // 8, res // 8, device="meta")).sample)
    return enc, dec


def inception_gflops() -> float:
    from torchvision.models import inception_v3

    with torch.device("meta"):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    return count_gflops(lambda: net(torch.empty(1, 3, 299, 299, device="meta")))


def png_bytes() -> tuple[float, float, float]:
    """Mean PNG size of skimage's colour photos as ingest writes them at 256 px, and ms to write / read one."""
    from PIL import Image
    from skimage import data

    from pipeline.ingest import _png

    photos = [Image.fromarray(getattr(data, n)()) for n in ("astronaut", "chelsea", "coffee", "rocket")]
    sizes, t0 = [], time.perf_counter()
    for im in photos:
        sizes.append(len(_png(im, 256)))
    enc_ms = (time.perf_counter() - t0) / len(photos) * 1e3
    blobs = [_png(im, 256) for im in photos]
    t0 = time.perf_counter()
    for _ in range(5):
        for b in blobs:
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    dec_ms = (time.perf_counter() - t0) / (5 * len(blobs)) * 1e3
    return float(np.mean(sizes)), enc_ms, dec_ms


def blosc(dtype: str, hwc: tuple[int, int, int]) -> tuple[float, float, float]:
    """Raw / stored bytes of Zarr chunks with the features stage's codec (Blosc zstd level 3) on synthetic N(0, 1)
    values, and the raw MB/s of writing and of reading them back (local disk; Blosc's own threads)."""
    import zarr

    x = np.random.default_rng(0).standard_normal((64, *hwc), dtype=np.float32).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        a = zarr.create_array(store=d, shape=x.shape, chunks=(16, *hwc), dtype=dtype,
                              compressors=[zarr.codecs.BloscCodec(cname="zstd", clevel=3)])
        t0 = time.perf_counter()
        a[:] = x
        t1 = time.perf_counter()
        a[:]
        t2 = time.perf_counter()
        stored = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and f.name != "zarr.json")
    return x.nbytes / stored, x.nbytes / (t1 - t0) / 1e6, x.nbytes / (t2 - t1) / 1e6


def shard_bytes(shape: tuple[int, ...], n: int = 200) -> float:
    """Bytes per sample of a latents shard as pipeline/levels.py writes it (latent.npy float32 + cls, in a tar)."""
    import webdataset as wds

    with tempfile.TemporaryDirectory() as d:
        with wds.ShardWriter(f"{d}/t-%06d.tar", maxcount=n, verbose=0) as w:
            for i in range(n):
                w.write({"__key__": f"{i:07d}", "latent.npy": np.zeros(shape, np.float32), "cls": 0})
        return sum(f.stat().st_size for f in Path(d).glob("*.tar")) / n


def tar_member(nbytes: float) -> float:
    return 512 + 512 * np.ceil(nbytes / 512)


def hours(flops: float) -> str:
    lo, hi = (flops / (PEAK * m) / 3600 for m in reversed(MFU))
    return f"{lo:,.1f} - {hi:,.1f}" if hi >= 1 else f"{lo:.2f} - {hi:.2f}"


def main() -> None:
    from models.denoiser import default_patch_size
    from pipeline.config import load_config
    from pipeline.schema import TrainConfig
    from pipeline.costs import cost_table, model_cost
    from pipeline.level_kinds import level_shape

    began = time.perf_counter()
    cfg = load_config(CONFIG, check_files=False)
    L = cfg.num_levels
    n_hold = round(N_IMAGES * cfg.dataset.holdout_fraction)  # ingest splits by content hash: about this many
    n_train = N_IMAGES - n_hold
    (h, w, c), enc_gf = encoder_gflops(cfg)
    vae_enc, vae_dec = vae_gflops(cfg.dataset.resolution)
    inc_gf = inception_gflops()
    png, png_enc_ms, png_dec_ms = png_bytes()
    (r32, wmbs, rmbs), (r16, _, _) = blosc("float32", (h, w, c)), blosc("float16", (h, w, c))

    # --- models: the config as written (schema defaults) and the paper plan
    written = cost_table(cfg)
    shapes = {0: PAPER["vae_shape"], **{k: level_shape(cfg, k) for k in range(1, L)}}
    paper = []
    for lv in range(L):
        conds = [shapes[k] for k in cfg.conditions_of(lv)]
        tc = TrainConfig(backbone="uvit", size=PAPER["size"], patch_size=2 if lv == 0 else None,
                         steps=PAPER["steps"], batch_size=PAPER["batch"])
        params, gf = model_cost(tc, shapes[lv], conds)
        paper.append(dict(level=lv, shape=shapes[lv], conds=cfg.conditions_of(lv), params=params, gflops=gf,
                          patch=tc.patch_size or default_patch_size(shapes[lv][1]), guided=bool(conds)))
    base_params, base_gf = model_cost(TrainConfig(backbone="uvit", size=PAPER["size"], patch_size=2),
                                      shapes[0], [])

    print(f"# scale plan: {CONFIG.relative_to(ROOT)}, N = {N_IMAGES:,} images ({n_train:,} train, {n_hold:,} held out)\n")
    print("## Per-forward GFLOPs (flop_counter, 2 per multiply-add)\n")
    print("| level | config as written | GFLOPs | paper plan | tokens | params (M) | GFLOPs |\n|---|---|---|---|---|---|---|")
    for r, p in zip(written["levels"], paper):
        s = p["shape"]
        print(f"| {r['level']} | {r['backbone']}-{r['size']} on {'x'.join(map(str, r['shape']))} | "
              f"{r['gflops_per_forward']:.2f} | uvit-{PAPER['size']}/{p['patch']} on {'x'.join(map(str, s))} | "
              f"{(s[1] // p['patch']) ** 2} | {p['params'] / 1e6:.1f} | {p['gflops']:.2f} |")
    tot = sum(p["gflops"] for p in paper)
    print(f"| all | | {written['total_gflops_per_forward']:.2f} ({written['relative_to_baseline']:.3f}x) | | | "
          f"{sum(p['params'] for p in paper) / 1e6:.1f} | {tot:.2f} ({tot / base_gf:.3f}x the L = 1 "
          f"U-ViT-{PAPER['size']}/2's {base_gf:.2f}) |")
    print(f"\nOther networks: {cfg.encoder.name} at {cfg.encoder.input_size} px {enc_gf:.2f}; SD-VAE encoder "
          f"{vae_enc:.1f} and decoder {vae_dec:.1f} at {cfg.dataset.resolution} px; Inception-v3 at 299 px {inc_gf:.2f}.")

    # --- storage
    pngs = 1 if cfg.dataset.resolution == cfg.dataset.source_size else 2  # ingest writes src.png only if it differs
    img_sample = pngs * tar_member(png) + 2 * tar_member(200)  # img.png (and src.png), cls, json
    lat = {lv: shard_bytes((shapes[lv][0], shapes[lv][1], shapes[lv][2])) for lv in range(1, L)}
    feat_raw = N_IMAGES * h * w * c * 4
    rows = [
        ("images: shards", f"N x ({pngs} PNG(s) of {png / 1e3:.0f} kB at {cfg.dataset.resolution} px + tar headers)",
         N_IMAGES * img_sample),
        ("encoder_features, float32 raw", f"N x {h} x {w} x {c} x 4 B = N x {h * w * c * 4:,} B", feat_raw),
        (f"encoder_features, Blosc zstd-3 ({r32:.2f}x measured)", "raw / ratio", feat_raw / r32),
        ("encoder_features if stored float16", f"N x {h * w * c * 2:,} B (raw)", feat_raw / 2),
        (f"... float16, Blosc ({r16:.2f}x)", "raw / ratio", feat_raw / 2 / r16),
        ("svd basis", f"({c} x {c} + 4 x {c}) x 4 B", (c * c + 4 * c) * 4),
    ]
    for lv in range(1, L):
        cc, s, _ = shapes[lv]
        rows.append((f"level_{lv}_latents ({s}x{s}x{cc})", f"N x {lat[lv]:,.0f} B/sample in tar "
                     f"({cc * s * s * 4:,} B of float32)", N_IMAGES * lat[lv]))
    vae_b = int(np.prod(PAPER["vae_shape"])) * 4
    rows.append(("level-0 VAE latents (paper plan)", f"N x {vae_b:,} B (a safetensors per split)", N_IMAGES * vae_b))
    for p in paper:
        rows.append((f"level_{p['level']}_model (paper plan)", f"{p['params'] / 1e6:.0f}M params x 8 B (model + ema); "
                     f"checkpoints 2 x 16 B/param more", p["params"] * 8))
    sample_b = tar_member(png) + sum(tar_member(np.prod(shapes[lv]) * 4 + 128) for lv in range(L)) + 512
    rows.append(("samples (50k)", f"50k x {sample_b / 1e3:.0f} kB (png + every level's .npy)", PAPER["num_samples"] * sample_b))
    rows.append(("reference_stats", "(N_train + N_hold) x 2048 x 4 B + 2048^2 x 8 B", N_IMAGES * 2048 * 4 + 2048 ** 2 * 8))
    print("\n## Storage\n\n| artifact | arithmetic | size |\n|---|---|---|")
    for name, how, b in rows:
        print(f"| {name} | {how} | {b / GB:,.2f} GB |" if b >= 1e8 else f"| {name} | {how} | {b / 1e6:,.2f} MB |")
    ckpt = sum(p["params"] for p in paper) * 32
    print(f"\nTraining checkpoints (paper plan, keep = 2, all levels): {ckpt / GB:.1f} GB. "
          f"PNG write {png_enc_ms:.1f} ms (fit + encode, one of the two), read {png_dec_ms:.2f} ms, one core. "
          f"Features Zarr (float32): write {wmbs:,.0f} MB/s, read {rmbs:,.0f} MB/s of raw floats.")

    # --- compute
    print(f"\n## GPU-hours (H100 at {MFU[0]:.0%} - {MFU[1]:.0%} MFU of {PEAK / 1e12:.0f} TFLOP/s)\n")
    print("| work | formula | PFLOPs | GPU-hours |\n|---|---|---|---|")

    def row(name, formula, flops):
        print(f"| {name} | {formula} | {flops / 1e15:,.1f} | {hours(flops)} |")

    row("encoder_features", f"N x {enc_gf:.1f} GFLOPs", N_IMAGES * enc_gf * 1e9)
    row("level-0 VAE latents", f"N x {vae_enc:.0f} GFLOPs", N_IMAGES * vae_enc * 1e9)
    total = 0.0
    for p in paper:
        f = PAPER["steps"] * PAPER["batch"] * 3 * p["gflops"] * 1e9
        total += f
        row(f"train level {p['level']}", f"{PAPER['steps']:,} x {PAPER['batch']} x 3 x {p['gflops']:.2f} GFLOPs", f)
    row("train, all levels", "sum", total)
    row("train, L = 1 baseline", f"{PAPER['steps']:,} x {PAPER['batch']} x 3 x {base_gf:.2f} GFLOPs",
        PAPER["steps"] * PAPER["batch"] * 3 * base_gf * 1e9)
    tcs = [cfg.train_config(lv) for lv in range(L)]
    row("train, config as written", " + ".join(f"{t.steps} x {t.batch_size} x 3 x {r['gflops_per_forward']:.2f}"
                                               for t, r in zip(tcs, written["levels"])),
        sum(3 * t.steps * t.batch_size * r["gflops_per_forward"] * 1e9 for t, r in zip(tcs, written["levels"])))
    ns, st = PAPER["num_samples"], PAPER["sample_steps"]
    samp = sum(ns * st * p["gflops"] * (2 if p["guided"] else 1) for p in paper) * 1e9
    row("samples (50k)", f"50k x {st} steps x sum(GFLOPs x 2 if guided) + 50k x {vae_dec:.0f} (decode)",
        samp + ns * vae_dec * 1e9)
    row("reference_stats + evaluation", f"(N + 50k) x {inc_gf:.1f} GFLOPs", (N_IMAGES + ns) * inc_gf * 1e9)
    print(f"\nEpochs per level: {PAPER['steps'] * PAPER['batch'] / n_train:.0f} "
          f"({PAPER['steps']:,} x {PAPER['batch']} / {n_train:,}). Done in {time.perf_counter() - began:.0f} s.")


if __name__ == "__main__":
    main()
