"""Training throughput of our U-ViT level-0 denoiser, and of the official U-ViT (baofff/U-ViT) at the same config.

    python benchmarks/train_throughput.py --size S --precision bfloat16 --compile --official ../U-ViT \
        --out benchmarks/results/gpu_throughput.json

Random data, the epsilon MSE loss, AdamW with gradient clipping (as pipeline/train.py trains); both models run the
same loop, timed after --warmup steps (with torch.cuda.synchronize() on GPU). Attention is SDPA in both: timm's
Attention in ours, F.scaled_dot_product_attention in the official libs/uvit.py. With --cond-shapes ours is timed
with the coarser levels fused in (the official U-ViT has no conditions, so it is timed only without them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script from any directory
from models.denoiser import build_denoiser, count_params  # noqa: E402
from models.uvit import UVIT_SIZES  # noqa: E402


def official_uvit(repo: Path, size: str, in_shape, patch_size: int) -> torch.nn.Module:
    """The official UViT class, imported by file path from a checkout, built with our `size`'s config."""
    libs = Path(repo) / "libs"
    if not (libs / "uvit.py").is_file():
        raise SystemExit(f"--official {repo}: no libs/uvit.py there (want a checkout of github.com/baofff/U-ViT)")
    # libs/uvit.py does `from .timm import ...`: give it a parent package under a private name
    pkg = types.ModuleType("official_uvit_libs")
    pkg.__path__ = [str(libs)]
    sys.modules[pkg.__name__] = pkg
    spec = importlib.util.spec_from_file_location(f"{pkg.__name__}.uvit", libs / "uvit.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    except ImportError as e:
        raise SystemExit(f"the official U-ViT ({libs / 'uvit.py'}) cannot be imported: {e}. It needs einops "
                         f"(and tries xformers only where SDPA is missing): {sys.executable} -m pip install einops")
    s = UVIT_SIZES[size]
    return mod.UViT(img_size=in_shape[1], patch_size=patch_size, in_chans=in_shape[0], embed_dim=s["dim"],
                    depth=s["depth"], num_heads=s["heads"], mlp_ratio=s["mlp_ratio"], qkv_bias=False,
                    mlp_time_embed=False, num_classes=-1)


def measure(model, forward, args, device, cond_shapes=()) -> dict:
    """Seconds per training step and images per second, after args.warmup steps."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.99, 0.999), weight_decay=0.03)
    net = torch.compile(model) if args.compile else model
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, device=device), 0)  # DDPM's linear schedule
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bfloat16")
    B, sync = args.batch_size, (torch.cuda.synchronize if device.type == "cuda" else lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        x0 = torch.randn(B, *args.in_shape, device=device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (B,), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        conds = [torch.randn(B, *s, device=device) for s in cond_shapes]
        with autocast:
            pred = forward(net, xt, t, conds)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    began = time.perf_counter()
    for _ in range(args.warmup):  # allocation, cuDNN autotuning and torch.compile's graph capture
        step()
    sync()
    warm, t0 = time.perf_counter() - began, time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    sec = (time.perf_counter() - t0) / args.steps
    out = {"params": count_params(model), "sec_per_step": sec, "images_per_sec": B / sec,
           "warmup_seconds": round(warm, 2), "final_loss": loss.item()}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def ours_forward(model, x, t, conds):
    """Ours as pipeline/train.py calls it: conditions dropped with p_uncond = 0.15 where there are any."""
    drop = torch.rand(x.shape[0], device=x.device) < 0.15 if conds else None
    return model(x, t, conds, None, drop)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="S", choices=list(UVIT_SIZES))
    ap.add_argument("--in-shape", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"),
                    help="level 0's shape (default: configs/ablation_gpu.yaml's 32 px RGB)")
    ap.add_argument("--patch-size", type=int, default=2)
    ap.add_argument("--cond-shapes", nargs="*", default=[], metavar="C,S,S",
                    help="coarser levels fused into ours, e.g. 32,4,4 16,2,2 (default: none, the L = 1 baseline)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--official", type=Path, help="a checkout of github.com/baofff/U-ViT: time its UViT too")
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        ap.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    cond_shapes = [tuple(int(v) for v in s.split(",")) for s in args.cond_shapes]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")

    torch.manual_seed(0)
    official = official_uvit(args.official, args.size, args.in_shape, args.patch_size) if args.official else None
    ours = build_denoiser("uvit", args.size, tuple(args.in_shape), cond_shapes, patch_size=args.patch_size)
    results = {"ours": measure(ours, ours_forward, args, device, cond_shapes)}
    del ours
    if official is not None:
        results["official"] = measure(official, lambda m, x, t, c: m(x, t), args, device)
        results["ours_over_official"] = results["ours"]["images_per_sec"] / results["official"]["images_per_sec"]

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "settings": {"size": args.size, "in_shape": args.in_shape, "patch_size": args.patch_size,
                     "cond_shapes": [list(s) for s in cond_shapes], "batch_size": args.batch_size,
                     "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
                     "compile": args.compile, "device": str(device), "attention": "sdpa",
                     "official": str(args.official) if args.official else None},
        **results,
    }
    print(f"U-ViT-{args.size} training, {'x'.join(map(str, args.in_shape))} patch {args.patch_size}, "
          f"conditions {args.cond_shapes or 'none'}, batch {args.batch_size}, {args.precision}"
          f"{', compiled' if args.compile else ''}, on {result['device']}")
    print("| model | params (M) | s / step | images / s |\n|---|---|---|---|")
    for name in ("ours", "official"):
        if name in result:
            r = result[name]
            print(f"| {name} | {r['params'] / 1e6:.2f} | {r['sec_per_step']:.4f} | {r['images_per_sec']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
