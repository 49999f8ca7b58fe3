#!/usr/bin/env bash
# The setup as a newcomer on plain PyPI gets it: this machine's extra pip sources (find-links, config
# files, index overrides) switched off, so torch==2.13.0 is PyPI's CUDA build. Sets up a separate venv
# (kept in the cache, so a second run takes seconds), checks that it really holds a CUDA-enabled torch,
# then trains the digits example on 2 ranks under horovodrun and checks its accuracy (>= 0.95).
#
# Horovod is built here for torch only (HVDTRAIN_HOROVOD_FRAMEWORKS=torch): torch is the one input plain PyPI
# changes. TensorFlow's half of the build has the same inputs as `make setup`'s (tensorflow-cpu, Keras and cmake
# are pinned in requirements.txt; the compiler, MPI and the patch are the machine's), so `make test`'s build has
# already proved it; building it twice cost CI about 3 minutes (docs/setup.md).
#
# Knobs (environment): PLAIN_PYPI_VENV (default $HVDTRAIN_CACHE/plain-pypi-venv), HVDTRAIN_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

CACHE="${HVDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}"
VENV="${PLAIN_PYPI_VENV:-$CACHE/plain-pypi-venv}"
start=$SECONDS

say "plain-PyPI setup into $VENV (extra pip sources off)"
env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  PIP_EXTRA_ARGS= VENV="$VENV" HVDTRAIN_HOROVOD_FRAMEWORKS=torch bash scripts/setup_env.sh

"$VENV/bin/python" - <<'PY'
import torch
assert torch.version.cuda is not None, f"torch {torch.__version__} is a CPU build: the pip sources were not plain PyPI"
print(f"[setup] plain PyPI gave torch {torch.__version__} (CUDA {torch.version.cuda}); CUDA usable here: "
      f"{torch.cuda.is_available()}")
PY

run_dir="$(mktemp -d)"
trap 'rm -rf "$run_dir"' EXIT
# The README's example as `make train` runs it (12 epochs, about 10 s); it reaches 0.97-0.99 here.
"$VENV/bin/horovodrun" -np 2 -H localhost:2 "$VENV/bin/python" -m hvdtrain --config configs/digits.yaml \
  run.progress=off run.dir="$run_dir/digits"
"$VENV/bin/python" - "$run_dir/digits/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
accuracy = summary["final"]["val_accuracy"]
assert summary["world_size"] == 2 and accuracy >= 0.95, f"np=2 digits on plain PyPI: val_accuracy {accuracy}"
print(f"[setup] plain PyPI: digits on 2 ranks reached val_accuracy {accuracy:.4f}")
PY
say "plain-PyPI check passed in $((SECONDS - start)) s (venv $(du -sh "$VENV" | cut -f1))"
