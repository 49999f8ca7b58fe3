#!/usr/bin/env bash
# What the offline GPU check (scripts/gpu_check.sh --offline) needs and a lent GPU machine cannot fetch, made
# here where there is network: Horovod 0.28.1's source distribution and wheels of the small packages hvdtrain's
# torch path and Horovod's build use (installed there only where the machine's Python lacks them). One ignored
# folder, checked to stay under 50 MiB so that the working tree and the bundle travel together (64 MiB).
#
#   bash scripts/gpu_check_bundle.sh            # gpu-bundle/, wheels for CPython 3.12 (the lent machines')
#   GPU_BUNDLE_PYTHON=3.11 bash scripts/gpu_check_bundle.sh   # wheels for another Python (the CPU test here)
#   GPU_BUNDLE_DIR=/path bash scripts/gpu_check_bundle.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

HOROVOD_VERSION=0.28.1
LIMIT_MIB=50
OUT="${GPU_BUNDLE_DIR:-$ROOT/gpu-bundle}"
PYVER="${GPU_BUNDLE_PYTHON:-3.12}"
PY="${VENV:-$ROOT/.venv}/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"
# Pure-Python or small packages: pinned where requirements.txt pins them. Not torch, numpy or CUDA: the
# machine's own are used as they are.
WHEELS=(pyyaml==6.0.3 "cloudpickle>=3" "psutil>=5.9" "packaging>=23" "setuptools>=70" "wheel>=0.43")

case "$PYVER" in
  3.[0-9]|3.[0-9][0-9]) ;;
  *) die "GPU_BUNDLE_PYTHON=$PYVER: expected a Python version like 3.12" ;;
esac

tmp="$(mktemp -d "${OUT%/}.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
say "downloading horovod $HOROVOD_VERSION's source and ${#WHEELS[@]} wheels for CPython $PYVER into $OUT"
"$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$tmp" 2>&1 | quiet_pip \
  || die "could not download horovod $HOROVOD_VERSION's source: is there network here?"
"$PY" -m pip download -q --no-deps --only-binary :all: --python-version "$PYVER" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform any -d "$tmp" "${WHEELS[@]}" 2>&1 | quiet_pip \
  || die "could not download the wheels for CPython $PYVER"
[ -f "$tmp/horovod-$HOROVOD_VERSION.tar.gz" ] || die "the download holds no horovod-$HOROVOD_VERSION.tar.gz"
(cd "$tmp" && sha256sum -- * > SHA256SUMS)
echo "$PYVER" > "$tmp/PYTHON_VERSION"

size_kib="$(du -sk "$tmp" | cut -f1)"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
  die "the bundle is $((size_kib / 1024)) MiB, over the $LIMIT_MIB MiB that may travel beside the tree"
fi
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT
say "bundle ready: $OUT, $(ls "$OUT" | wc -l) files, $(awk -v k="$size_kib" 'BEGIN { printf "%.1f", k / 1024 }') MiB (limit $LIMIT_MIB MiB)"
say "carry it to the GPU machine with the tree (the device tool's carry: [\"$(basename "$OUT")\"]), then run: bash scripts/gpu_check.sh --offline"
