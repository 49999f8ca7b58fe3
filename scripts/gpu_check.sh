#!/usr/bin/env bash
# The GPU check. Two ways, one result folder (at most 8 small files: summary.txt with each step's time, the
# logs, doctor.json, the benchmark table):
#
#   bash scripts/gpu_check.sh             # a machine with network: sets up the CUDA stack (HVDTRAIN_DEVICE=cuda
#                                         # make setup, about 7 GB the first time), then doctor, the GPU test tier
#                                         # and the GPU benchmark on both backends
#   bash scripts/gpu_check.sh --offline   # a machine without network, with a Python that has torch (the lent
#                                         # GPU machines): PyTorch only, from gpu-bundle/ (scripts/gpu_check_bundle.sh)
#
# Without --offline, a machine where no package index answers takes the offline way too.
#
# The offline way: a venv over the machine's Python (--system-site-packages, and a .pth file where that Python is
# itself a venv, so its torch and CUDA libraries are used as they are); what it lacks of hvdtrain's small
# dependencies from the bundle (pip --no-index); Horovod 0.28.1 built from the bundle's source for PyTorch only,
# Gloo without MPI, with NCCL and the machine's nvcc when there is a GPU (compute capabilities of the GPUs
# found), on every core; then doctor; with a GPU the torch half of the GPU test tier and the torch rows of
# benchmarks.gpu, without one a 2-rank torch training run (what this machine can check of the path).
#
# Environment: GPU_CHECK_OUT (result folder; default runs/gpu-check), GPU_CHECK_PYTHON (the machine's Python;
# default python3), GPU_CHECK_BUNDLE (default gpu-bundle), GPU_CHECK_VENV (default .venv-offline).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${GPU_CHECK_OUT:-$ROOT/runs/gpu-check}"
OFFLINE=0
case "${1:-}" in
  --offline) OFFLINE=1 ;;
  "") ;;
  *) echo "usage: bash scripts/gpu_check.sh [--offline]" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
rm -f "$OUT"/summary.txt
status=0
check_start=$SECONDS
step_name="" step_start=0

# Each step's time goes to the summary when the next step starts (and at the end).
step() {
  [ -z "$step_name" ] || printf '%-34s %5d s\n' "$step_name" $((SECONDS - step_start)) >> "$OUT/summary.txt"
  step_name="$*" step_start=$SECONDS
  [ -z "$step_name" ] || printf '\n== gpu-check: %s\n' "$step_name"
}

finish() {
  step ""
  printf '%-34s %5d s\n' "total" $((SECONDS - check_start)) >> "$OUT/summary.txt"
  echo "result: $([ $status -eq 0 ] && echo passed || echo FAILED)" >> "$OUT/summary.txt"
  printf '\n== gpu-check: summary\n'
  cat "$OUT/summary.txt"
  [ -f "$OUT/benchmarks.md" ] && grep '^|' "$OUT/benchmarks.md"
  echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); everything is in $OUT"
  exit $status
}

index_answers() {
  timeout 20 "${GPU_CHECK_PYTHON:-python3}" -m pip download -q --no-deps -d "$(mktemp -d)" pyyaml==6.0.3 \
    >/dev/null 2>&1
}

gpu_count() { nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true; }

if [ "$OFFLINE" = 0 ] && ! index_answers; then
  echo "gpu-check: no package index answers: taking the offline way (--offline)"
  OFFLINE=1
fi

if [ "$OFFLINE" = 0 ]; then
  PY="${VENV:-$ROOT/.venv}/bin/python"
  step "setup (CUDA stack)"
  HVDTRAIN_DEVICE="${HVDTRAIN_DEVICE:-cuda}" make setup 2>&1 | tee "$OUT/setup.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "setup failed"; status=1; finish; }
  nvidia-smi -L 2>&1 | tee -a "$OUT/setup.log" || true

  step "doctor"
  "$PY" -m hvdtrain doctor --json | tee "$OUT/doctor.json"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  step "GPU test tier"
  "$PY" -m pytest -q -rs -m gpu tests/gpu 2>&1 | tee "$OUT/tests.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1

  step "GPU benchmark"
  HVDTRAIN_BENCH_REPORT="$OUT/benchmarks.md" "$PY" -m benchmarks.gpu --repeats 1 2>&1 | tee "$OUT/benchmarks.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  finish
fi

# ---- offline ----
BASE_PY="${GPU_CHECK_PYTHON:-python3}"
BUNDLE="${GPU_CHECK_BUNDLE:-$ROOT/gpu-bundle}"
VENV_DIR="${GPU_CHECK_VENV:-$ROOT/.venv-offline}"
PY="$VENV_DIR/bin/python"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2
GPUS="$(gpu_count)"

step "offline setup (venv, bundle)"
(  # a subshell: its `exit 1` ends the setup, not the check
  [ -f "$BUNDLE/horovod-0.28.1.tar.gz" ] || { echo "no Horovod source in $BUNDLE: run scripts/gpu_check_bundle.sh where there is network, and carry gpu-bundle with the tree"; exit 1; }
  "$BASE_PY" -c "import torch" || { echo "$BASE_PY has no torch: set GPU_CHECK_PYTHON to the Python that has it"; exit 1; }
  # Without pip of its own (Debian's and Ubuntu's Pythons may lack ensurepip): the machine's pip comes in with its
  # packages and installs into this venv.
  [ -x "$PY" ] || "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV_DIR" || exit 1
  base_site="$("$BASE_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  venv_site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # --system-site-packages reaches the interpreter under a venv, not the venv: its packages come by a .pth file.
  [ "$base_site" = "$venv_site" ] || echo "$base_site" > "$venv_site/hvdtrain-base-python.pth"
  "$PY" -c "import torch; print('torch', torch.__version__, 'from', torch.__file__)" || exit 1
  "$PY" -m pip --version || { echo "$BASE_PY has no pip"; exit 1; }
  missing=()
  for pair in yaml:pyyaml cloudpickle:cloudpickle psutil:psutil packaging:packaging setuptools:setuptools wheel:wheel; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing from the bundle: ${missing[*]}"
    "$PY" -m pip install -q --no-index --find-links "$BUNDLE" "${missing[@]}" || exit 1
  else
    echo "nothing to install: $BASE_PY has every small dependency"
  fi
) > "$OUT/setup.log" 2>&1 || { tail -3 "$OUT/setup.log"; status=1; finish; }
tail -n 2 "$OUT/setup.log"

step "Horovod build (torch, Gloo$([ "$GPUS" -gt 0 ] && echo ', NCCL'))"
build_env=(VENV="$VENV_DIR" HVDTRAIN_HOROVOD_FRAMEWORKS=torch HVDTRAIN_HOROVOD_MPI=0
           HVDTRAIN_HOROVOD_SDIST="$BUNDLE/horovod-0.28.1.tar.gz" "PATH=$(dirname "$(command -v "$BASE_PY")"):$PATH")
if [ "$GPUS" -gt 0 ]; then
  nvcc_path="$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)"
  [ -n "$nvcc_path" ] || { echo "no nvcc on this GPU machine: put CUDA's bin on PATH" | tee -a "$OUT/setup.log"; status=1; finish; }
  build_env+=(HVDTRAIN_DEVICE=cuda HVDTRAIN_CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"
              HVDTRAIN_NVIDIA_DIR="$("$PY" -c 'import nvidia.nccl, os; print(os.path.dirname(list(nvidia.nccl.__path__)[0]))')")
else
  build_env+=(HVDTRAIN_DEVICE=cpu)
fi
env "${build_env[@]}" bash scripts/build_horovod.sh >> "$OUT/setup.log" 2>&1 || { tail -3 "$OUT/setup.log"; status=1; finish; }
tail -n 1 "$OUT/setup.log"

step "doctor (torch)"
"$PY" -m hvdtrain doctor --json > "$OUT/doctor.json" 2>> "$OUT/setup.log"
"$PY" - "$OUT/doctor.json" "$GPUS" <<'EOF' || status=1
import json, sys
report, gpus = json.load(open(sys.argv[1])), int(sys.argv[2])
torch = report["torch"]
# Judged here, not by doctor's own "ok": doctor asks for MPI too (the setup's build), which this build leaves out.
ok = bool(torch["horovod"]) and torch["gloo"] and (not gpus or (torch["nccl"] and torch["cuda"] and torch["gpus"] >= 1))
print(f"torch {torch['version']}, horovod {torch['horovod']}: gloo {torch['gloo']}, mpi {torch['mpi']}, "
      f"nccl {torch['nccl_version'] or torch['nccl']}, GPUs {torch['gpus']} -> {'ok' if ok else 'NOT ok'}")
sys.exit(0 if ok else 1)
EOF

if [ "$GPUS" -gt 0 ]; then
  step "GPU test tier (torch)"
  "$PY" -m pytest -q -rs -m gpu tests/gpu -k torch -p no:cacheprovider > "$OUT/tests.log" 2>&1 || status=1
  tail -n 1 "$OUT/tests.log"

  step "GPU benchmark (torch)"
  HVDTRAIN_BENCH_REPORT="$OUT/benchmarks.md" "$PY" -m benchmarks.gpu --repeats 1 --backends torch \
    > "$OUT/benchmarks.log" 2>&1 || { tail -5 "$OUT/benchmarks.log"; status=1; }
else
  step "2-rank torch training (no GPU here)"
  PATH="$VENV_DIR/bin:$PATH" "$VENV_DIR/bin/horovodrun" --gloo -np 2 -H localhost:2 "$PY" -m hvdtrain \
    --config configs/digits.yaml run.progress=lines "run.dir=$OUT/digits-run" run.overwrite=true \
    > "$OUT/train.log" 2>&1 || status=1
  "$PY" - "$OUT/digits-run/summary.json" <<'EOF' || status=1
import json, sys
summary = json.load(open(sys.argv[1]))
ok = summary["world_size"] == 2 and summary["final"]["val_accuracy"] >= 0.95  # the default example's mark
print(f"configs/digits.yaml at np=2 over Gloo: {summary['steps']} steps, val_accuracy "
      f"{summary['final']['val_accuracy']:.3f} -> "
      f"{'ok' if ok else 'NOT ok'}")
sys.exit(0 if ok else 1)
EOF
  rm -rf "$OUT/digits-run"  # the folder keeps the check's few files
fi
finish
