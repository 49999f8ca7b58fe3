# Shared helpers for the setup scripts (sourced, not run).
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
# Drops pip's warnings about configured package locations that do not exist on this machine;
# everything else (errors included) passes through.
quiet_pip() { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
# The first error in a build log, on one line. pip prints its own "error: subprocess-exited-with-error"
# before the output of the build it ran, so the causes come first: CMake's error (with its more deeply
# indented message lines), then the compiler's or linker's, then patch's; pip's own lines last.
first_build_error() {
  awk '
    function indent(line) { match(line, /^ */); return RLENGTH }
    cmake_at && !cmake && indent($0) >= cmake_at { line = $0; sub(/^ +/, "", line); msg = msg " " line; next }
    cmake_at && !cmake { cmake = msg }
    /CMake Error/ && !cmake_at { cmake_at = indent($0) + 1; msg = $0; sub(/^ +/, "", msg); next }
    !compiler && /(fatal error|error):/ && !/subprocess-exited-with-error|metadata-generation-failed|^ *(error|ERROR): / {
      compiler = $0; sub(/^ +/, "", compiler) }
    !compiler && /undefined reference|ld returned/ { compiler = $0; sub(/^ +/, "", compiler) }
    !other && (/^Hunk #[0-9]+ FAILED|malformed patch|^patch: \*\*\*\*|can.t find file to patch/) { other = $0 }
    !other && /(^|[^a-z])(error|ERROR)[: ]/ { other = $0; sub(/^ +/, "", other) }
    END {
      if (cmake_at && !cmake) cmake = msg
      print (cmake ? cmake : (compiler ? compiler : other))
    }
  ' "$1" 2>/dev/null | cut -c1-400
}

# --- Device: the CPU or the CUDA stack ---------------------------------------------------------------------
# How many NVIDIA GPUs this machine has: `nvidia-smi -L` when it answers, else the driver's entries in
# /proc/driver/nvidia/gpus (HVDTRAIN_NVIDIA_GPUS_DIR points elsewhere, for the tests).
gpu_count() {
  local n
  n="$(timeout 30 nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  if [ "${n:-0}" -gt 0 ]; then echo "$n"; return; fi
  local dir="${HVDTRAIN_NVIDIA_GPUS_DIR:-/proc/driver/nvidia/gpus}"
  n=0
  if [ -d "$dir" ]; then n="$(find "$dir" -mindepth 1 -maxdepth 1 | wc -l)"; fi
  echo "$n"
}

# Sets DEVICE (cpu or cuda) and DEVICE_REASON. HVDTRAIN_DEVICE=cuda|cpu forces the choice; unset or auto:
# cuda when this machine has an NVIDIA GPU, else the stack $VENV already holds (a CUDA one set up on purpose,
# e.g. on a login node, stays: it runs on CPUs too), else cpu.
choose_device() {
  case "${HVDTRAIN_DEVICE:-auto}" in
    cpu|cuda) DEVICE="$HVDTRAIN_DEVICE"; DEVICE_REASON="HVDTRAIN_DEVICE=$HVDTRAIN_DEVICE" ;;
    auto)
      local n
      n="$(gpu_count)"
      if [ "$n" -gt 0 ]; then DEVICE=cuda; DEVICE_REASON="$n NVIDIA GPU(s) found"
      elif [ "$(cat "${VENV:-.venv}/.hvdtrain-device" 2>/dev/null)" = cuda ]; then
        DEVICE=cuda; DEVICE_REASON="no NVIDIA GPU found, but ${VENV:-.venv} holds the CUDA stack (HVDTRAIN_DEVICE=cpu switches it)"
      else DEVICE=cpu; DEVICE_REASON="no NVIDIA GPU found"; fi ;;
    *) die "HVDTRAIN_DEVICE=$HVDTRAIN_DEVICE: use cuda, cpu or auto (the default: cuda when an NVIDIA GPU is found)" ;;
  esac
}

# Sets CC_LIST (comma-separated compute capabilities, HOROVOD_BUILD_CUDA_CC_LIST's format) and CC_SOURCE:
# HOROVOD_BUILD_CUDA_CC_LIST when set, else the visible GPUs' (nvidia-smi), else 90 (Hopper; its PTX also
# runs on newer GPUs). CUDA 13 cannot build for GPUs below 7.5 (Volta and older).
choose_cc_list() {
  if [ -n "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]; then
    CC_LIST="$HOROVOD_BUILD_CUDA_CC_LIST"; CC_SOURCE="HOROVOD_BUILD_CUDA_CC_LIST"
  else
    CC_LIST="$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .\r' \
               | grep -E '^[0-9]+$' | sort -n -u | paste -sd, - || true)"
    if [ -n "$CC_LIST" ]; then CC_SOURCE="the GPUs found (nvidia-smi)"
    else CC_LIST=90; CC_SOURCE="default: no GPU to ask; set HOROVOD_BUILD_CUDA_CC_LIST=80,90 for others"; fi
  fi
  local cc
  for cc in ${CC_LIST//,/ }; do
    case "$cc" in
      ''|*[!0-9]*) die "HOROVOD_BUILD_CUDA_CC_LIST=$CC_LIST: expected compute capabilities like 80,90" ;;
    esac
    [ "$cc" -ge 75 ] || die "compute capability $cc is below 7.5: CUDA 13 (torch 2.13's CUDA) cannot build for it (set HVDTRAIN_DEVICE=cpu, or HOROVOD_BUILD_CUDA_CC_LIST to your GPUs' from 7.5 on)"
  done
}

# The version of the NCCL whose nccl.h is given, as 2.29.7.
nccl_header_version() {
  awk '/^#define NCCL_MAJOR /{a=$3} /^#define NCCL_MINOR /{b=$3} /^#define NCCL_PATCH /{c=$3}
       END { if (a != "") print a "." b "." c }' "$1" 2>/dev/null
}

# nvcc's full version, as 13.0.88 ("Cuda compilation tools, release 13.0, V13.0.88").
nvcc_version() { "$1" --version 2>/dev/null | sed -n 's/.*, V\([0-9][0-9.]*\).*/\1/p' | head -1; }

# The version of the cuDNN whose cudnn_version.h is given, as 9.20.0.
cudnn_header_version() {
  awk '/^#define CUDNN_MAJOR /{a=$3} /^#define CUDNN_MINOR /{b=$3} /^#define CUDNN_PATCHLEVEL /{c=$3}
       END { if (a != "") print a "." b "." c }' "$1" 2>/dev/null
}
