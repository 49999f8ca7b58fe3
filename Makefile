# Single entry point. `make train` and `make test` set up everything first (idempotent, cached).
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= 2
CONFIG ?= configs/digits.yaml
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test test-fast test-races test-unit test-distributed doctor docs lint check-plain-pypi check-offline-gpu

# The CPU stack, or on a machine with an NVIDIA GPU the CUDA one (Horovod with NCCL); HVDTRAIN_DEVICE=cuda|cpu
# forces the choice. `bash scripts/setup_env.sh --plan` shows what it would do (docs/setup.md).
setup:
	@bash scripts/setup_env.sh

# Default example: 2 ranks under horovodrun on the embedded digits dataset.
train: setup
	$(VENV)/bin/horovodrun -np $(NP) $(PY) -m hvdtrain --config $(CONFIG) run.overwrite=true $(ARGS)

# The whole test suite: lint and types first, then unit tests, then real horovodrun/mpirun multi-process tests.
# It ends with the 15 slowest tests, the total and the processes the tests started (docs/testing.md).
test: setup lint
	$(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS)

# The edit loop: lint, the unit tests and one 2-rank run per backend (tests marked smoke), a few minutes.
test-fast: setup lint
	$(PY) -m pytest -ra --durations=15 -m "not distributed or smoke" $(PYTEST_ARGS)

# Every test that kills, stops or races processes (marked races), REPEATS rounds in a row; stops at the first
# failing round and shows its output (docs/testing.md records the last count).
REPEATS ?= 20
test-races: setup
	@log=$$(mktemp); for i in $$(seq $(REPEATS)); do \
	  $(PY) -m pytest -q -p no:cacheprovider -m races $(PYTEST_ARGS) > $$log 2>&1 || \
	    { cat $$log; echo "races: round $$i of $(REPEATS) failed"; rm -f $$log; exit 1; }; \
	  echo "races: round $$i of $(REPEATS) passed: $$(grep -E '[0-9]+ passed' $$log | tail -n 1)"; \
	done; rm -f $$log

test-unit: setup
	$(PY) -m pytest -ra -m "not distributed" $(PYTEST_ARGS)

test-distributed: setup
	$(PY) -m pytest -ra -m distributed $(PYTEST_ARGS)

doctor: setup
	$(PY) -m hvdtrain doctor

docs: setup
	$(PY) -m hvdtrain config-docs > docs/config.md

# ruff (rules in pyproject.toml) over every Python file, then mypy, strict, over hvdtrain/, torch_backend/ and
# tf_backend/ (files and settings in pyproject.toml). Neither imports a framework: seconds, cached in .mypy_cache/.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# The offline GPU check's path, here without a GPU (docs/gpu.md): a bundle for this Python, then
# scripts/gpu_check.sh --offline over .venv's Python (it has torch) with the package index off: Horovod built from
# the bundle for torch with Gloo only (cached by its key), doctor, a 2-rank torch run. Results: runs/gpu-check-offline.
check-offline-gpu: setup
	GPU_BUNDLE_PYTHON=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
	  GPU_BUNDLE_DIR=$(CURDIR)/gpu-bundle-local bash scripts/gpu_check_bundle.sh
	GPU_CHECK_PYTHON=$(abspath $(PY)) GPU_CHECK_BUNDLE=$(CURDIR)/gpu-bundle-local \
	  GPU_CHECK_OUT=$(CURDIR)/runs/gpu-check-offline bash scripts/gpu_check.sh --offline

# The setup and a 2-rank training run as on plain PyPI (this machine's extra pip sources off), in a venv kept
# in the cache: the newcomer's path, checked by CI so that it cannot silently break again.
check-plain-pypi:
	@bash scripts/check_plain_pypi.sh
