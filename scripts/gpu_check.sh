#!/usr/bin/env bash
# The GPU check for a fresh machine with an NVIDIA GPU: sets up the CUDA stack (HVDTRAIN_DEVICE=cuda make
# setup), prints doctor's report, runs the GPU test tier (tests/gpu/) and the GPU benchmark (ResNet-50
# synthetic fp32 vs bf16 img/s, hvdtrain vs a hand-written Horovod loop, data wait with augmentation on the
# GPU), then a summary. About 10 minutes on a 16-core machine with one GPU once set up; the first setup adds
# the downloads (about 7 GB) and the Horovod build.
#
#   bash scripts/gpu_check.sh            # results in runs/gpu-check/ (GPU_CHECK_OUT to change)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${GPU_CHECK_OUT:-$ROOT/runs/gpu-check}"
PY="${VENV:-$ROOT/.venv}/bin/python"
mkdir -p "$OUT"
status=0
step() { printf '\n== gpu-check: %s\n' "$*"; }

step "setup (CUDA stack)"
HVDTRAIN_DEVICE="${HVDTRAIN_DEVICE:-cuda}" make setup 2>&1 | tee "$OUT/setup.log" || { echo "setup failed"; exit 1; }
nvidia-smi -L | tee "$OUT/gpus.txt" || true

step "doctor"
"$PY" -m hvdtrain doctor --json | tee "$OUT/doctor.json" || status=1

step "GPU test tier"
"$PY" -m pytest -q -rs -m gpu tests/gpu 2>&1 | tee "$OUT/tests.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "GPU benchmark (writes $OUT/benchmarks.md)"
HVDTRAIN_BENCH_REPORT="$OUT/benchmarks.md" "$PY" -m benchmarks.gpu --repeats 1 2>&1 | tee "$OUT/benchmarks.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "summary"
tail -n 3 "$OUT/tests.log"
[ -f "$OUT/benchmarks.md" ] && grep '^|' "$OUT/benchmarks.md"
echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); everything is in $OUT"
exit $status
