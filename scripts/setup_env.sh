#!/usr/bin/env bash
# One-command environment for hvdtrain: system prerequisites (C++ compiler, OpenMPI), the .venv with the
# pinned stack, a cached Horovod build, and hvdtrain itself. Idempotent: a second run takes seconds.
#
# Knobs (environment): PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# HVDTRAIN_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/hvdtrain), PIP_EXTRA_ARGS (e.g. an --index-url
# for torch's CPU wheels on machines where plain PyPI would bring a CUDA build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

apt_install() {
  # Installs Debian packages when apt is available and we may use it; otherwise returns 1.
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else return 1; fi
  fi
  say "apt-get install $*"
  local stamp=/tmp/.hvdtrain-apt-updated
  if [ ! -f "$stamp" ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq || return 1
    touch "$stamp" 2>/dev/null || true
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH: install Python 3.10-3.13 (apt-get install python3 python3-venv) or set PYTHON=/path/to/python"
  local ver
  ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  case "$ver" in
    3.10|3.11|3.12|3.13) say "python $ver ($(command -v "$PYTHON"))" ;;
    *) die "Python $ver is not supported (TensorFlow 2.21 needs 3.10-3.13): set PYTHON=/path/to/python3.11" ;;
  esac
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install "python3-venv" || die "Python's venv module is missing: install python3-venv (apt-get install python3-venv)"
  fi
}

check_compiler() {
  if command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; then
    say "C++ compiler: $(c++ --version 2>/dev/null | head -1 || g++ --version | head -1)"
    return
  fi
  apt_install build-essential || die "no C++ compiler: install build-essential (apt-get install build-essential)"
}

check_mpi() {
  if ! command -v mpicxx >/dev/null 2>&1; then
    apt_install libopenmpi-dev openmpi-bin \
      || die "mpicxx not found: install OpenMPI (apt-get install libopenmpi-dev openmpi-bin) or load your cluster's MPI module (e.g. 'module load openmpi') and re-run"
  fi
  say "MPI: $(mpirun --version 2>/dev/null | head -1)"
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local key stamp="$VENV/.hvdtrain-requirements"
  key="$(cat requirements.txt; "$VENV/bin/python" --version; mpirun --version 2>/dev/null | head -1)"
  key="$(printf '%s' "$key" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    say "python packages up to date ($VENV)"
    return
  fi
  say "installing pinned python packages into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet_pip
  # mpi4py is compiled against the MPI found above so that mpirun and mpi4py agree.
  # shellcheck disable=SC2086
  MPICC="$(command -v mpicc)" "$VENV/bin/python" -m pip install -q --no-binary mpi4py ${PIP_EXTRA_ARGS:-} \
    -r requirements.txt 2>&1 | quiet_pip
  echo "$key" > "$stamp"
}

install_project() {
  # Installed, and from this checkout (a venv kept in a cache may hold another clone's editable install).
  # Checked from / so that the checkout itself is not on sys.path.
  if (cd / && "$VENV/bin/python" -c 'import sys, hvdtrain, torch_backend, tf_backend
sys.exit(not hvdtrain.__file__.startswith(sys.argv[1] + "/"))' "$ROOT") >/dev/null 2>&1 \
     && [ -x "$VENV/bin/hvdtrain" ]; then
    return
  fi
  say "installing hvdtrain (editable) into $VENV"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" 2>&1 | quiet_pip
}

check_python
check_compiler
check_mpi
make_venv
VENV="$VENV" bash "$ROOT/scripts/build_horovod.sh"
install_project
say "environment ready: source $VENV/bin/activate"
