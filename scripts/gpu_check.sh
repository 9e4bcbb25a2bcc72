#!/usr/bin/env bash
# Every check a GPU allows, in one call: reference models CUDA vs CPU, fp16 on the GPU, onnxruntime-gpu and
# TensorRT where installed; prints a summary table. Runs on a CPU-only machine too (SKIP lines, exit 0).
# Usage: scripts/gpu_check.sh [--steps N]      (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py "$@"
