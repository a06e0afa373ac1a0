"""compute.device, the CPU side: refused when wrong, resolved where the stages run, recorded in every heavy stage's
metadata, and never part of a fingerprint (the GPU side: benchmarks/gpu_smoke.sh)."""
import os
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, parse_config
from pipeline.plan import build_plan
from pipeline.runtime import device_for, resolve_device, sampling_device

ROOT = Path(__file__).resolve().parent.parent
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side: this process sees a GPU")

# Every stage whose work a GPU would do, and what its metadata must say here.
HEAVY = ("encoder_features", "level_0_model", "level_1_model", "level_2_model", "samples", "reference_stats",
         "evaluation", "variations")


def with_device(cfg, device):
    data = cfg.model_dump(mode="json")
    data["compute"]["device"] = device
    return parse_config(data)


def test_an_unknown_device_is_refused_with_its_field(tiny_cfg):
    with pytest.raises(ConfigError, match=r"compute\.device"):
        with_device(tiny_cfg, "gpu")
    with pytest.raises(ValueError, match="compute.device"):
        resolve_device("tpu")


@no_gpu
def test_cuda_without_a_gpu_is_refused_and_auto_falls_back_to_the_cpu():
    with pytest.raises(RuntimeError, match="compute.device: cuda, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="compute.device: cuda"):
        device_for(0, "cuda")  # a training rank asks the same question
    assert resolve_device("auto") == resolve_device("cpu") == sampling_device("auto") == torch.device("cpu")
    assert device_for(0, "auto") == torch.device("cpu")


def test_the_device_changes_no_fingerprint(tiny_cfg, tmp_path):
    plans = [build_plan(with_device(tiny_cfg, d), tmp_path) for d in ("auto", "cpu", "cuda")]
    assert [{n: st.fingerprint for n, st in p.items()} for p in plans[1:]] == [
        {n: st.fingerprint for n, st in plans[0].items()}] * 2


@no_gpu
def test_every_heavy_stage_says_where_it_ran(tiny_run):
    plan = build_plan(tiny_run["cfg"], tiny_run["home"])
    said = {name: plan[name].artifact.metadata() for name in HEAVY}
    assert {name: meta.get("device") for name, meta in said.items()} == {name: "cpu" for name in HEAVY}
    # the evaluation's `precision` is the metric's: Inception's arithmetic is `inception_precision` there
    arithmetic = {name: meta.get("inception_precision" if name in ("reference_stats", "evaluation") else "precision")
                  for name, meta in said.items()}
    assert set(arithmetic.values()) <= {"float32", "bfloat16"}, arithmetic


FREED_BLOCK = r"""
import sys
import numpy as np
from pipeline.runtime import large_blocks_returned

def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

def kept_after_free():
    block = np.ones(24 << 18, np.float32); del block  # glibc's own threshold now follows this 24 MiB block
    before = rss_mib()
    block = np.ones(16 << 18, np.float32); del block  # 16 MiB, freed: kept on the heap, or handed back
    return rss_mib() - before

default = kept_after_free()
with large_blocks_returned():
    inside = kept_after_free()
print(default, inside)
"""


NESTED_BLOCKS = r"""
import ctypes
import numpy as np
from pipeline.runtime import large_blocks_returned

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mapped(nbytes):
    before = libc.mallinfo2().hblks
    block = np.ones(nbytes // 4, np.float32)
    return libc.mallinfo2().hblks - before

out = []
# A block beyond the heap's free top is mapped when it is over the threshold, else the heap grows for it.
with large_blocks_returned():                      # a stage: blocks over 4 MiB mapped
    out += [mapped(2 << 20), mapped(8 << 20)]
    with large_blocks_returned(64 << 10):          # the ingest inside it: an image's buffers mapped too
        out += [mapped(2 << 20)]
    out += [mapped(2 << 20), mapped(8 << 20)]      # the stage's threshold again, not glibc's settled 32 MiB
print(*out)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_ingest_maps_an_images_buffers_and_the_stage_threshold_comes_back():
    import subprocess

    out = subprocess.run([sys.executable, "-c", NESTED_BLOCKS], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["0", "1", "1", "0", "1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_streaming_stage_hands_freed_large_blocks_back():
    """Streaming stages free a same-sized block per chunk; with glibc's moving threshold each stays resident."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FREED_BLOCK], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    default, inside = map(float, out.stdout.split())
    assert default > 12  # the 16 MiB block stayed: what grew the latents stage with N
    assert inside < 2
