#!/usr/bin/env bash
# Builds Horovod 0.28.1 from PyPI's source distribution with PyTorch, TensorFlow, Gloo and MPI, patched
# for today's toolchains (scripts/horovod-0.28.1.patch: C++17, no XLA ops, CUDA-enabled torch built as a
# CPU one; CMake 4 via CMAKE_POLICY_VERSION_MINIMUM), and installs it into $VENV. The wheel is cached under
# $HVDTRAIN_CACHE keyed by everything that changes the binary, so a second setup installs it in seconds.
# A failed build keeps its whole log at $HVDTRAIN_CACHE/last-horovod-build.log and names its first error.
#
# Knobs (environment): HVDTRAIN_HOROVOD_PATCH (another patch file, e.g. to test the failure path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

HOROVOD_VERSION=0.28.1
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CACHE="${HVDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}"
PATCH="${HVDTRAIN_HOROVOD_PATCH:-$ROOT/scripts/horovod-$HOROVOD_VERSION.patch}"
LOG="$CACHE/last-horovod-build.log"

[ -x "$PY" ] || die "no venv at $VENV: run scripts/setup_env.sh"
command -v mpicxx >/dev/null 2>&1 || die "mpicxx not found: install OpenMPI (apt-get install libopenmpi-dev openmpi-bin) or load an MPI module"

versions="$("$PY" - <<'EOF'
import importlib.metadata as md, sys
import torch  # its CUDA version too: a CUDA and a CPU wheel of one release may share a version string
print("py%d.%d" % sys.version_info[:2], "torch" + md.version("torch"), "cuda" + str(torch.version.cuda),
      "tf" + md.version("tensorflow-cpu"))
EOF
)"
mpi_version="$(mpirun --version 2>/dev/null | head -1)"
key="$(printf '%s|%s|%s|%s' "$HOROVOD_VERSION" "$versions" "$mpi_version" "$(sha256sum "$PATCH" | cut -c1-16)" | sha256sum | cut -c1-16)"
wheel_dir="$CACHE/horovod-$HOROVOD_VERSION-$key"
stamp="$VENV/.hvdtrain-horovod"

build_failed() {
  # The log lives in the cache, not in the build folder that the EXIT trap removes.
  local first
  first="$(first_build_error "$LOG")"
  die "$1: ${first:-no error line recognised, see the log} (full log: $LOG)"
}

verify() {
  export TF_CPP_MIN_LOG_LEVEL=2
  # torch and TensorFlow are checked in separate processes: hvdtrain never loads both in one.
  "$PY" -c 'import horovod.torch as h; assert h.mpi_built() and h.gloo_built(), "torch: MPI or Gloo missing"' \
    && "$PY" -c 'import horovod.tensorflow as h; assert h.mpi_built() and h.gloo_built(), "tensorflow: MPI or Gloo missing"'
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && verify 2>/dev/null; then
  say "horovod $HOROVOD_VERSION up to date ($versions)"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  say "building horovod $HOROVOD_VERSION for $versions, $mpi_version (first time: about 8-10 minutes on 2 cores)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$CACHE"
  : > "$LOG"
  "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" 2>&1 | quiet_pip >>"$LOG" \
    || build_failed "could not download the horovod $HOROVOD_VERSION source"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  patch -d "$src" -p1 < "$PATCH" >>"$LOG" 2>&1 || build_failed "could not apply $PATCH to the horovod source"
  # The venv's bin comes first so its cmake (4.x, pinned) and python are the ones used. This is the CPU
  # build: no GPU operations, and a CUDA-enabled torch (plain PyPI's) is built against as a CPU one.
  PATH="$VENV/bin:$PATH" \
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
    HOROVOD_WITHOUT_MXNET=1 HOROVOD_TORCH_WITHOUT_CUDA=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
    "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$src" >>"$LOG" 2>&1 \
    || build_failed "horovod build failed"
  # Publish the wheel atomically: a half-copied wheel must never look like a cache hit.
  mkdir -p "$wheel_dir.tmp.$$"
  cp "$work"/dist/horovod-*.whl "$wheel_dir.tmp.$$/"
  rm -rf "$wheel_dir"
  mv "$wheel_dir.tmp.$$" "$wheel_dir"
else
  say "horovod $HOROVOD_VERSION: using cached wheel in $wheel_dir"
fi

"$PY" -m pip install -q --no-deps --force-reinstall "$wheel_dir"/horovod-*.whl
verify || die "horovod installed but its self-check failed: delete $wheel_dir and re-run"
echo "$key" > "$stamp"
say "horovod $HOROVOD_VERSION installed (torch + tensorflow, gloo + mpi)"
