#!/usr/bin/env bash
# Builds Horovod 0.28.1 from PyPI's source distribution with PyTorch, TensorFlow, Gloo and MPI, patched
# for today's toolchains (scripts/horovod-0.28.1.patch: C++17, no XLA ops, CUDA-enabled torch built as a
# CPU one; CMake 4 via CMAKE_POLICY_VERSION_MINIMUM), and installs it into $VENV. The wheel is cached under
# $HVDTRAIN_CACHE keyed by everything that changes the binary, so a second setup installs it in seconds.
# A failed build keeps its whole log at $HVDTRAIN_CACHE/last-horovod-build.log and names its first error.
#
# Two builds. The CPU one: Gloo and MPI, a CUDA-enabled torch built against as a CPU one.
# With HVDTRAIN_DEVICE=cuda (scripts/setup_env.sh passes its choice), the GPU one: HOROVOD_GPU_OPERATIONS=NCCL
# plus Gloo and MPI, scripts/horovod-0.28.1-cuda.patch on top, nvcc from the nvidia-cuda-nvcc wheel (or
# HVDTRAIN_CUDA_HOME's toolkit) and NCCL from the nvidia-nccl-cu13 wheel (docs/setup.md, "GPU machines").
#
# The offline GPU check (scripts/gpu_check.sh --offline) builds a third kind: PyTorch only, Gloo without MPI,
# from a source distribution that travelled with the tree (HVDTRAIN_HOROVOD_FRAMEWORKS=torch,
# HVDTRAIN_HOROVOD_MPI=0, HVDTRAIN_HOROVOD_SDIST=FILE).
#
# Knobs (environment): HVDTRAIN_HOROVOD_PATCH (another patch file, e.g. to test the failure path),
# HVDTRAIN_DEVICE (cpu or cuda; default: the venv's stack), HVDTRAIN_CUDA_HOME (a CUDA 13 toolkit to build
# with instead of the wheels'), HOROVOD_BUILD_CUDA_CC_LIST (compute capabilities to build for; default: the
# GPUs found, else 90), HVDTRAIN_HOROVOD_FRAMEWORKS ("torch tensorflow", or "torch"), HVDTRAIN_HOROVOD_MPI (1, or 0:
# Gloo only, no MPI library needed), HVDTRAIN_HOROVOD_SDIST (horovod-0.28.1.tar.gz to build from instead of
# downloading it; a download is kept in $HVDTRAIN_CACHE and used by later builds), HVDTRAIN_HOROVOD_DEBUG_INFO
# (1: Horovod's own RelWithDebInfo build with -g, for debugging Horovod's C++; default 0: the same -O3 code
# without debug information, a quarter less compile time and a 4 MB instead of a 35 MB wheel).
#
# `scripts/build_horovod.sh --plan` prints the build's cache key and environment as key=value lines and
# builds nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

HOROVOD_VERSION=0.28.1
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CACHE="${HVDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}"
PATCH="${HVDTRAIN_HOROVOD_PATCH:-$ROOT/scripts/horovod-$HOROVOD_VERSION.patch}"
CUDA_PATCH="$ROOT/scripts/horovod-$HOROVOD_VERSION-cuda.patch"
LOG="$CACHE/last-horovod-build.log"

PLAN=0
case "${1:-}" in
  --plan) PLAN=1 ;;
  "") ;;
  *) die "usage: scripts/build_horovod.sh [--plan]" ;;
esac
# Default: the stack the venv holds (scripts/setup_env.sh marks a CUDA one).
DEVICE="${HVDTRAIN_DEVICE:-$(cat "$VENV/.hvdtrain-device" 2>/dev/null || echo cpu)}"
case "$DEVICE" in
  cpu|cuda) ;;
  *) die "HVDTRAIN_DEVICE=$DEVICE: use cuda or cpu" ;;
esac

FRAMEWORKS="${HVDTRAIN_HOROVOD_FRAMEWORKS:-torch tensorflow}"
case "$FRAMEWORKS" in
  "torch tensorflow"|torch) ;;
  *) die "HVDTRAIN_HOROVOD_FRAMEWORKS=$FRAMEWORKS: use \"torch tensorflow\" or torch" ;;
esac
DEBUG_INFO="${HVDTRAIN_HOROVOD_DEBUG_INFO:-0}"
case "$DEBUG_INFO" in
  0|1) ;;
  *) die "HVDTRAIN_HOROVOD_DEBUG_INFO=$DEBUG_INFO: use 0 (no debug information) or 1 (-g, as Horovod's own build)" ;;
esac
WITH_MPI="${HVDTRAIN_HOROVOD_MPI:-1}"
case "$WITH_MPI" in
  0|1) ;;
  *) die "HVDTRAIN_HOROVOD_MPI=$WITH_MPI: use 1 (MPI and Gloo) or 0 (Gloo only)" ;;
esac
SDIST="${HVDTRAIN_HOROVOD_SDIST:-}"
[ -z "$SDIST" ] || [ -f "$SDIST" ] || die "HVDTRAIN_HOROVOD_SDIST=$SDIST: no such file (scripts/gpu_check_bundle.sh makes it)"
# A downloaded source is kept beside the wheels: a rebuild (another torch, the debug build, a GPU build) does not
# download it again, and pip's download is most of a failed build's time (it prepares the package's metadata).
CACHED_SDIST="$CACHE/horovod-$HOROVOD_VERSION.tar.gz"
[ -n "$SDIST" ] || [ ! -f "$CACHED_SDIST" ] || SDIST="$CACHED_SDIST"

[ -x "$PY" ] || die "no venv at $VENV: run scripts/setup_env.sh"
if [ "$WITH_MPI" = 1 ]; then
  command -v mpicxx >/dev/null 2>&1 || die "mpicxx not found: install OpenMPI (apt-get install libopenmpi-dev openmpi-bin) or load an MPI module"
fi

versions="$("$PY" - "$DEVICE" "$FRAMEWORKS" <<'EOF'
import importlib.metadata as md, importlib.util, sys
# torch's CUDA version too (a CUDA and a CPU wheel of one release may share a version string), read from its
# version.py alone: importing torch for it costs seconds
spec = importlib.util.find_spec("torch")
version = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
    "torch_version", spec.submodule_search_locations[0] + "/version.py"))
version.__spec__.loader.exec_module(version)
if "tensorflow" not in sys.argv[2].split():
    tf = "none"
else:
    try:  # the CPU stack's TensorFlow is tensorflow-cpu (and tf-keras brings tensorflow too), the CUDA stack's
        tf = md.version("tensorflow" if sys.argv[1] == "cuda" else "tensorflow-cpu")
    except md.PackageNotFoundError:
        tf = md.version("tensorflow")
print("py%d.%d" % sys.version_info[:2], "torch" + md.version("torch"), "cuda" + str(version.cuda), "tf" + tf)
EOF
)"
if [ "$WITH_MPI" = 1 ]; then mpi_version="$(mpirun --version 2>/dev/null | head -1)"; else mpi_version="no MPI"; fi
patch_hash="$(sha256sum "$PATCH" | cut -c1-16)"
[ "$DEBUG_INFO" = 0 ] || patch_hash="$patch_hash+g"  # a build with debug information is another binary
# The build's environment. PATH: the venv's bin first, so that its cmake (4.x, pinned) and python are used.
build_path="$VENV/bin:$PATH"
build_env=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5
           "MAKEFLAGS=-j$(nproc)" "HVDTRAIN_HOROVOD_DEBUG_INFO=$DEBUG_INFO")
if [ "$FRAMEWORKS" = torch ]; then build_env+=(HOROVOD_WITHOUT_TENSORFLOW=1); else build_env+=(HOROVOD_WITH_TENSORFLOW=1); fi
if [ "$WITH_MPI" = 1 ]; then build_env+=(HOROVOD_WITH_MPI=1); mpi_fact=True
else build_env+=(HOROVOD_WITHOUT_MPI=1); mpi_fact=False; fi  # mpi_fact: the build facts' value (Python)
patches=("$PATCH")
# The build's scratch folder; the links below live in it, so that no path baked into the build outlives it.
work_plan="BUILD_DIR"

if [ "$DEVICE" = cpu ]; then
  # The same fields in the same format as before the CUDA build existed: cached CPU wheels stay valid.
  key="$(printf '%s|%s|%s|%s' "$HOROVOD_VERSION" "$versions" "$mpi_version" "$patch_hash" | sha256sum | cut -c1-16)"
  wheel_dir="$CACHE/horovod-$HOROVOD_VERSION-$key"
  # No GPU operations; a CUDA-enabled torch (plain PyPI's) is built against as a CPU one.
  build_env+=(HOROVOD_TORCH_WITHOUT_CUDA=1)
else
  # The wheels' files: nvidia/cu13/{bin,include,nvvm,lib} (nvcc, runtime, crt, cccl) and nvidia/nccl.
  # HVDTRAIN_NVIDIA_DIR points elsewhere (the tests' fake layout).
  nvidia="${HVDTRAIN_NVIDIA_DIR:-$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia}"
  torch_cuda="$(sed -n 's/.* cuda\([^ ]*\) .*/\1/p' <<<"$versions")"
  [ "$torch_cuda" != None ] || torch_cuda=""
  if [ -n "${HVDTRAIN_CUDA_HOME:-}" ]; then
    toolkit="system:$HVDTRAIN_CUDA_HOME"
    nvcc="$HVDTRAIN_CUDA_HOME/bin/nvcc"
    [ -x "$nvcc" ] || die "HVDTRAIN_CUDA_HOME=$HVDTRAIN_CUDA_HOME has no bin/nvcc"
    cuda_libdir="$HVDTRAIN_CUDA_HOME/lib64"
  else
    toolkit="wheels"
    nvcc="$nvidia/cu13/bin/nvcc"
    [ -x "$nvcc" ] || die "no nvcc at $nvidia/cu13/bin: $VENV lacks the CUDA stack (run HVDTRAIN_DEVICE=cuda make setup)"
    cuda_libdir="$nvidia/cu13/lib"
  fi
  if [ -n "${CUDA_HOME:-}" ] && [ "$CUDA_HOME" != "${HVDTRAIN_CUDA_HOME:-}" ]; then
    say "note: CUDA_HOME=$CUDA_HOME is not used to build Horovod (HVDTRAIN_CUDA_HOME=$CUDA_HOME would)" >&2
  fi
  cuda_version="$(nvcc_version "$nvcc")"
  [ -n "$cuda_version" ] || die "cannot tell the version of $nvcc"
  if [ -n "$torch_cuda" ] && [ "${cuda_version%%.*}" != "${torch_cuda%%.*}" ]; then
    die "nvcc $cuda_version ($nvcc) does not match torch's CUDA $torch_cuda: point HVDTRAIN_CUDA_HOME at a CUDA ${torch_cuda%%.*} toolkit, or unset it to use the wheels'"
  fi
  nccl_version="$(nccl_header_version "$nvidia/nccl/include/nccl.h")"
  [ -n "$nccl_version" ] || die "no NCCL at $nvidia/nccl (the nvidia-nccl-cu13 wheel): run HVDTRAIN_DEVICE=cuda make setup"
  choose_cc_list
  patches+=("$CUDA_PATCH")
  cuda_facts="cuda nvcc$cuda_version nccl$nccl_version cc$CC_LIST toolkit-$toolkit cudapatch$(sha256sum "$CUDA_PATCH" | cut -c1-16)"
  key="$(printf '%s|%s|%s|%s|%s' "$HOROVOD_VERSION" "$versions" "$mpi_version" "$patch_hash" "$cuda_facts" \
         | sha256sum | cut -c1-16)"
  wheel_dir="$CACHE/horovod-$HOROVOD_VERSION-cuda-$key"
fi
stamp="$VENV/.hvdtrain-horovod"

# The CUDA build's environment for a scratch folder $1: the toolkit (HVDTRAIN_CUDA_HOME, or a folder of
# links to the wheels' files in the layout CMake's FindCUDAToolkit and torch's cpp_extension expect: lib64/,
# libcudart.so) and NCCL (a folder with include/nccl.h and lib/libnccl.so, linked shared).
cuda_env() {
  local cuda_home="${HVDTRAIN_CUDA_HOME:-$1/cuda-toolkit}"
  build_path="$cuda_home/bin:$build_path"
  build_env+=(HOROVOD_GPU_OPERATIONS=NCCL "HOROVOD_CUDA_HOME=$cuda_home" "CUDA_HOME=$cuda_home"
              "HOROVOD_NCCL_HOME=$1/nccl" HOROVOD_NCCL_LINK=SHARED "HOROVOD_BUILD_CUDA_CC_LIST=$CC_LIST"
              "LIBRARY_PATH=$cuda_libdir${LIBRARY_PATH:+:$LIBRARY_PATH}")
}

make_cuda_links() {
  mkdir -p "$1/nccl/lib"
  ln -s "$nvidia/nccl/include" "$1/nccl/include"
  ln -s "$nvidia/nccl/lib/libnccl.so.2" "$1/nccl/lib/libnccl.so.2"
  ln -s libnccl.so.2 "$1/nccl/lib/libnccl.so"
  [ "$toolkit" = wheels ] || return 0
  local home="$1/cuda-toolkit" d f
  mkdir -p "$home/lib64"
  for d in bin include nvvm; do ln -s "$nvidia/cu13/$d" "$home/$d"; done
  for f in "$nvidia/cu13/lib"/*; do ln -s "$f" "$home/lib64/"; done
  [ -e "$home/lib64/libcudart.so" ] || ln -s libcudart.so.13 "$home/lib64/libcudart.so"
}

if [ "$PLAN" = 1 ]; then
  [ "$DEVICE" = cpu ] || cuda_env "$work_plan"
  echo "device=$DEVICE"
  echo "key=$key"
  echo "wheel_dir=$wheel_dir"
  echo "versions=$versions"
  echo "mpi=$mpi_version"
  echo "frameworks=$FRAMEWORKS"
  echo "sdist=${SDIST:-download}"
  echo "patches=${patches[*]}"
  if [ "$DEVICE" = cuda ]; then
    echo "toolkit=$toolkit"
    echo "cuda_version=$cuda_version"
    echo "torch_cuda_version=$torch_cuda"
    echo "nccl_version=$nccl_version"
    echo "cc_list_source=$CC_SOURCE"
  fi
  echo "PATH=$build_path"
  printf '%s\n' "${build_env[@]}"
  exit 0
fi

build_failed() {
  # The log lives in the cache, not in the build folder that the EXIT trap removes.
  local first
  first="$(first_build_error "$LOG")"
  die "$1: ${first:-no error line recognised, see the log} (full log: $LOG)"
}

verify() {
  export TF_CPP_MIN_LOG_LEVEL=2
  # torch and TensorFlow are checked in separate processes: hvdtrain never loads both in one. The CUDA build
  # must have NCCL and CUDA too (build facts: checked without a GPU).
  local fw check="h.gloo_built()" lacks="Gloo"
  if [ "$WITH_MPI" = 1 ]; then check="h.mpi_built() and $check"; lacks="MPI or Gloo"; fi
  if [ "$DEVICE" = cuda ]; then check="$check and h.nccl_built() and h.cuda_built()"; lacks="$lacks, NCCL or CUDA"; fi
  # horovodrun's answers (build facts, no framework imported) must be what the extensions say.
  "$PY" -c "from horovod.common import util as u; assert u._build_fact('gloo') is True and u._build_fact('mpi') is $mpi_fact, 'build facts missing or wrong'" || return 1
  for fw in $FRAMEWORKS; do
    # TensorFlow logs lines about oneDNN and absent CUDA drivers before its logging is set up
    # (TF_CPP_MIN_LOG_LEVEL does not reach them): dropped; everything else passes through.
    "$PY" -c "import horovod.$fw as h; assert $check, '$fw: horovod lacks $lacks'" \
      2> >(grep -v -e 'absl::InitializeLog' -e 'oneDNN custom operations are on' \
                   -e 'Could not find cuda drivers on your machine' >&2 || true) || return 1
  done
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && verify 2>/dev/null; then
  say "horovod $HOROVOD_VERSION up to date ($versions${nccl_version:+, NCCL $nccl_version})"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  if [ "$DEVICE" = cpu ]; then
    say "building horovod $HOROVOD_VERSION for $versions, $mpi_version (first time: about 8-10 minutes on 2 cores)"
  else
    say "building horovod $HOROVOD_VERSION with NCCL $nccl_version and CUDA $cuda_version ($toolkit), compute capabilities $CC_LIST ($CC_SOURCE), for $versions, $mpi_version (first time: about 10 minutes on 2 cores)"
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$CACHE"
  : > "$LOG"
  if [ -n "$SDIST" ]; then
    cp "$SDIST" "$work/horovod-$HOROVOD_VERSION.tar.gz"
  else
    "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" 2>&1 | quiet_pip >>"$LOG" \
      || build_failed "could not download the horovod $HOROVOD_VERSION source"
    cp "$work/horovod-$HOROVOD_VERSION.tar.gz" "$CACHED_SDIST.tmp" && mv "$CACHED_SDIST.tmp" "$CACHED_SDIST"
  fi
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work" >>"$LOG" 2>&1 \
    || build_failed "could not unpack ${SDIST:-the downloaded source} (damaged? remove it and run again)"
  src="$work/horovod-$HOROVOD_VERSION"
  for p in "${patches[@]}"; do
    patch -d "$src" -p1 < "$p" >>"$LOG" 2>&1 || build_failed "could not apply $p to the horovod source"
  done
  # What this build has, for horovodrun to read instead of importing a framework per launch (the patch's
  # _build_fact): Horovod's build fails rather than leave out what HOROVOD_WITH_* asks for, and verify checks it.
  printf '# Written by hvdtrain scripts/build_horovod.sh from the build flags.\nFACTS = {"mpi": %s, "gloo": True}\n' \
    "$mpi_fact" > "$src/horovod/common/build_facts.py"
  if [ "$DEVICE" = cuda ]; then
    make_cuda_links "$work"
    cuda_env "$work"
  fi
  env PATH="$build_path" "${build_env[@]}" \
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
built_with="${FRAMEWORKS// / + }, gloo"
if [ "$WITH_MPI" = 1 ]; then built_with="$built_with + mpi"; fi
if [ "$DEVICE" = cpu ]; then
  say "horovod $HOROVOD_VERSION installed ($built_with)"
else
  say "horovod $HOROVOD_VERSION installed ($built_with + nccl $nccl_version, CUDA $cuda_version)"
fi
