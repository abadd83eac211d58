#!/usr/bin/env bash
# One-GPU check (about 5 minutes on an H100): throughput of scratch/kd/ofa/fbt on Swin-T -> ResNet18 at
# 224 (bf16, channels_last, eager and torch.compile) and one quickstart epoch on CUDA.
# Usage: bash benchmarks/gpu_check.sh [extra gpu_check.py args]   (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec "$PY" benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}/gpu_check.json" "$@"
