#!/usr/bin/env bash
# The first run on a GPU, in at most 8 minutes: the tests of the CUDA-only paths on CUDA, then
# full-grid timings saved as records where benchmarks/sizing.py reads them, then the sizing table
# with GPU-hours.
#
#   benchmarks/gpu_check.sh            # on a GPU; records: benchmarks/records/{train,explain}-cuda.json
#   benchmarks/gpu_check.sh --small    # on the CPU at small sizes (the default without CUDA):
#                                      # proves the script and its records work (about a minute)
#
# Steps (each a benchmark that exists on its own; this script only chains them):
#   1. pytest -k cuda: the [cuda] cases of the GPU-path tests (training with bf16, channels_last,
#      fused Adam; prediction; batched Grad-CAM; registration and warping on the device; DDP over
#      NCCL with 2+ GPUs). Skipped with --small: CI runs their CPU cases.
#   2. benchmarks/train.py: training and inference seconds per sample and peak memory of the 3D
#      model (and the 2.5D baseline) at the full grid, the training defaults' paths.
#   3. benchmarks/explain.py: Grad-CAM and registration (the authors' whole protocol on a GPU)
#      per participant, two SYNTHETIC full-size participants.
#   4. benchmarks/sizing.py over the committed records plus these (GPU only: --small's grid is
#      not the config's).
# Options: --out DIR (where the records go; --small default benchmarks/runs/gpu_check),
# --budget SECONDS (default 480: each step gets what is left). PYTHON picks the interpreter
# (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
small=auto
out=""
budget=480
while [[ $# -gt 0 ]]; do
  case $1 in
    --small) small=1 ;;
    --out) out=$2; shift ;;
    --budget) budget=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $small == auto ]]; then
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    small=0
  else
    echo "gpu_check: no CUDA GPU: running --small on the CPU"
    small=1
  fi
fi
if [[ -z $out ]]; then
  out=$([[ $small == 1 ]] && echo benchmarks/runs/gpu_check || echo benchmarks/records)
fi
mkdir -p "$out"

started=$SECONDS
step() {  # step NAME COMMAND...: run it within what is left of the budget
  local name=$1 left
  shift
  left=$((budget - (SECONDS - started)))
  if ((left < 10)); then
    echo "gpu_check: out of time before: $name" >&2
    exit 1
  fi
  echo "== $name (at most ${left} s)"
  local t0=$SECONDS
  if ! timeout "$left" "$@"; then
    echo "gpu_check: FAILED: $name" >&2
    exit 1
  fi
  echo "== $name: $((SECONDS - t0)) s"
}

if [[ $small == 1 ]]; then
  # 28 x 22 x 46, the demo grid halved: r3d's layer4 is 4 deep there (see tests/age/age_helpers.py
  # for why not 2); the GPU's paths forced on the CPU, so step 2 runs the code a GPU runs.
  step "training and inference, small grid, GPU paths on the CPU" \
    "$PY" benchmarks/train.py --device cpu --model 3d --grid 28 22 46 --gpu-paths \
    --steps 1 --warmup 0 --save "$out/train-small.json"
  step "Grad-CAM and registration, small participants" \
    "$PY" benchmarks/explain.py --device cpu --scale 0.125 --cpu-affine 2 --cpu-steps 2 \
    --save "$out/explain-small.json"
else
  step "tests of the GPU paths on CUDA" \
    "$PY" -m pytest -q -p no:cacheprovider -k cuda \
    tests/age/test_gpu_paths.py tests/explain/test_gradcam_batch.py tests/explain/test_register.py
  step "training and inference, full grid" \
    "$PY" benchmarks/train.py --device cuda --save "$out/train-cuda.json"
  step "Grad-CAM and registration per participant, full grid" \
    "$PY" benchmarks/explain.py --device cuda --save "$out/explain-cuda.json"
  step "sizing with the GPU records" \
    "$PY" benchmarks/sizing.py --disk benchmarks/records/disk.json \
    --train benchmarks/records/train-3d.json benchmarks/records/train-2.5d.json \
    "$out/train-cuda.json" \
    --explain benchmarks/records/explain.json "$out/explain-cuda.json" \
    --markdown-out "$out/sizing-cuda.md"
fi
echo "gpu_check: done in $((SECONDS - started)) s; records in $out"
