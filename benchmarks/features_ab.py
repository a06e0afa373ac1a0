"""Figure 1 alone, quickly: the features stage function vs the raw timm forward (1 thread, emoji build).

    .venv/bin/python benchmarks/features_ab.py     # needs the emoji images built under .nested/
"""
import time, tempfile, torch
from pathlib import Path
torch.set_num_threads(1)
from pipeline.config import load_config
from pipeline.plan import build_plan
from pipeline.features import Preprocess, image_batches, extract_features
from models.encoder import load_encoder
cfg = load_config("configs/emoji.yaml"); enc = cfg.encoder
images = build_plan(cfg, Path(".nested"))["images"].path
pre = Preprocess(enc)
batches = [pre(torch.from_numpy(b)) for _, b in image_batches(images, enc.batch_size)]
model = load_encoder(enc.name, enc.weights, enc.checkpoint_format).to(memory_format=torch.channels_last)
def raw():
    with torch.inference_mode():
        model.forward_features(batches[0]); t = time.perf_counter()
        for x in batches: model.forward_features(x)
        return time.perf_counter() - t
r1 = raw()
t = time.perf_counter(); extract_features(enc, images, Path(tempfile.mkdtemp()), log=lambda _: None); a = time.perf_counter() - t
r2 = raw()
n = sum(len(b) for b in batches)
print(f"raw {n/((r1+r2)/2):.1f} img/s ({r1:.1f}, {r2:.1f} s); stage {n/a:.1f} img/s ({a:.1f} s); ratio {((r1+r2)/2)/a:.3f}")
