#!/usr/bin/env bash
# The GPU profile as one command, run from the repo root on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_profile.sh [--dry-run] [--official PATH]
#
# 1. `make setup` (the venv and the emoji data; SKIP_SETUP=1 skips it), 2. nvidia-smi, 3. the level ablation on
# configs/ablation_gpu.yaml (benchmarks/ablation.py --profile gpu: hours; results in benchmarks/results/ablation.json
# and ablation.png), 4. training throughput of our U-ViT at that config's level-0 shape (bf16, SDPA, torch.compile)
# without conditions, against the official U-ViT when --official names a checkout of github.com/baofff/U-ViT
# (it needs einops), and with the config's conditions fused in (its L = 3). Writes to $GPU_PROFILE_OUT
# (default benchmarks/results): gpu_throughput.json, gpu_throughput_nested.json, nvidia_smi.txt, ablation_gpu.log.
#
# --dry-run: everything CPU-sized, in a minute: the ablation validates the config and its variants and prints the
# per-run cost table (ablation.py --dry-run, trains nothing), throughput of U-ViT-tiny for 2 steps on the CPU in
# float32 without compile (gpu_throughput_dryrun.json, gpu_throughput_nested_dryrun.json).
# Environment: PYTHON (default .venv/bin/python), SKIP_SETUP=1, GPU_PROFILE_OUT, DAGSTER_HOME (default .dagster_home).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OFFICIAL=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --official) [ $# -ge 2 ] || { echo "--official needs a path" >&2; exit 2; }; OFFICIAL=(--official "$2"); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (usage: bash benchmarks/gpu_profile.sh [--dry-run] [--official PATH])" >&2; exit 2 ;;
  esac
  shift
done
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${GPU_PROFILE_OUT:-benchmarks/results}
CONFIG=configs/ablation_gpu.yaml
export DAGSTER_HOME=${DAGSTER_HOME:-$PWD/.dagster_home}
SUFFIX=$([ "$DRY" = 1 ] && echo _dryrun || true)
step() { echo; echo "== $*"; }

step "1. setup"
if [ "${SKIP_SETUP:-0}" = 1 ]; then
  echo "SKIP_SETUP=1: skipping make setup"
else
  make setup
fi
mkdir -p "$OUT" "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
if [ "$DRY" = 0 ]; then  # fail now, not after the hours of the ablation
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    f'torch {torch.__version__} sees no CUDA device: run with --dry-run for the CPU-sized check')"
fi
if [ ${#OFFICIAL[@]} -gt 0 ]; then
  [ -f "${OFFICIAL[1]}/libs/uvit.py" ] || { echo "--official ${OFFICIAL[1]}: no libs/uvit.py (want a checkout of github.com/baofff/U-ViT)" >&2; exit 2; }
  "$PYTHON" -c "import einops" 2>/dev/null || { echo "the official U-ViT needs einops: $PYTHON -m pip install einops" >&2; exit 2; }
fi

step "2. GPU"
if [ "$DRY" = 1 ]; then
  echo "dry run: skipping nvidia-smi"
elif command -v nvidia-smi >/dev/null; then
  nvidia-smi | tee "$OUT/nvidia_smi.txt"
else
  echo "nvidia-smi not found: no GPU info recorded (torch's device name goes into the throughput JSON)"
fi

step "3. level ablation on $CONFIG"
if [ "$DRY" = 1 ]; then
  echo "+ $PYTHON benchmarks/ablation.py --config $CONFIG --profile gpu --dry-run"
  "$PYTHON" benchmarks/ablation.py --config "$CONFIG" --profile gpu --dry-run
else
  echo "+ $PYTHON benchmarks/ablation.py --config $CONFIG --profile gpu  (log: $OUT/ablation_gpu.log)"
  "$PYTHON" benchmarks/ablation.py --config "$CONFIG" --profile gpu 2>&1 | tee "$OUT/ablation_gpu.log"
fi

step "4. training throughput at $CONFIG's level-0 shape"
# size, shape, patch and batch of the config's level 0, and the shapes of its conditions
L0=$("$PYTHON" -c "
from models.denoiser import default_patch_size
from pipeline.config import load_config
from pipeline.costs import level_shape
c = load_config('$CONFIG', check_files=False)
tc, shape = c.train_config(0), level_shape(c, 0)
print(tc.size, *shape, tc.patch_size or default_patch_size(shape[1]), tc.batch_size,
      *(','.join(map(str, level_shape(c, k))) for k in c.conditions_of(0)))")
read -r SIZE C H W PATCH BATCH CONDS <<<"$L0"
NLEVELS=$(( $(wc -w <<<"$CONDS") + 1 ))
if [ "$DRY" = 1 ]; then
  RUN=(--size tiny --steps 2 --warmup 1 --batch-size 4 --device cpu --precision float32)
else
  RUN=(--size "$SIZE" --batch-size "$BATCH" --device cuda --precision bfloat16 --compile)
fi
SHAPE=(--in-shape "$C" "$H" "$W" --patch-size "$PATCH")
echo "+ $PYTHON benchmarks/train_throughput.py ${RUN[*]} ${SHAPE[*]} ${OFFICIAL[*]} --out $OUT/gpu_throughput$SUFFIX.json"
"$PYTHON" benchmarks/train_throughput.py "${RUN[@]}" "${SHAPE[@]}" "${OFFICIAL[@]}" --out "$OUT/gpu_throughput$SUFFIX.json"
echo "+ $PYTHON benchmarks/train_throughput.py ${RUN[*]} ${SHAPE[*]} --cond-shapes $CONDS --out $OUT/gpu_throughput_nested$SUFFIX.json"
# shellcheck disable=SC2086  # CONDS: one word per condition
"$PYTHON" benchmarks/train_throughput.py "${RUN[@]}" "${SHAPE[@]}" --cond-shapes $CONDS --out "$OUT/gpu_throughput_nested$SUFFIX.json"

step "done"
echo "throughput: $OUT/gpu_throughput$SUFFIX.json (L = 1$([ ${#OFFICIAL[@]} -gt 0 ] && echo ', against the official U-ViT' || true)), $OUT/gpu_throughput_nested$SUFFIX.json (level 0 of L = $NLEVELS)"
if [ "$DRY" = 1 ]; then
  echo "ablation: dry run, nothing trained; the full run writes benchmarks/results/ablation.json and ablation.png"
else
  echo "ablation: benchmarks/results/ablation.json, benchmarks/results/ablation.png, log $OUT/ablation_gpu.log"
  echo "GPU info: $OUT/nvidia_smi.txt"
fi
