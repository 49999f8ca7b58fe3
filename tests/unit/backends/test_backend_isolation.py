"""Each backend in its own process: only the chosen framework is imported, and both build the same models."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import REPO

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras")
# Installed, used by neither backend's training, and loaded by Keras' import unless tf_backend hides them.
OPTIONAL_MODULES = ("sklearn", "matplotlib", "scipy", "pandas")
BACKENDS = ("torch", "tensorflow")
T = TypeVar("T")

# One process per backend: a tiny training run through the CLI, the framework modules it loaded listed, then
# every model case's per-variable counts (after the listing, so that building them cannot hide an import).
RUN_LIST_AND_COUNT = f"""
import json, runpy, sys
run_args, backend, cases = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
sys.argv = ["hvdtrain", *run_args]
try:
    runpy.run_module("hvdtrain", run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("MODULES", json.dumps(sorted(m for m in {FRAMEWORK_MODULES + OPTIONAL_MODULES!r} if m in sys.modules)))

from hvdtrain.config import load_config
if backend == "torch":
    from torch_backend.models import build_model
    count = lambda model: [p.numel() for p in model.parameters()]
else:
    import numpy as np
    from tf_backend.models import build_model
    count = lambda model: [int(np.prod(v.shape)) for v in model.trainable_variables]
print("COUNTS", json.dumps({{name: count(build_model(load_config(None, overrides).model, (32, 32, 3), 10))
                             for name, overrides in cases.items()}}))
if backend == "tensorflow":  # hidden only while TensorFlow imports: importable as usual afterwards
    import matplotlib.colors, pandas, scipy.sparse, sklearn.base
"""
MODEL_CASES = {
    "cnn": ["model.name=cnn", "model.channels=[16,32,64]", "model.hidden_units=[128,64]"],
    "cnn-no-hidden": ["model.name=cnn", "model.channels=[8]", "model.hidden_units=[]", "model.dropout=0.3"],
    "mlp": ["model.name=mlp", "model.hidden_units=[256,128]", "model.dropout=0.5"],
}
Counts = dict[str, list[int]]


def last_json(out: str, tag: str) -> object:
    line = [ln for ln in out.splitlines() if ln.startswith(tag + " ")][-1]
    return json.loads(line[len(tag) + 1:])


def for_both_backends(work: Callable[[str], T]) -> dict[str, T]:
    """backend -> work(backend), the two side by side (each starts a process that imports its framework)."""
    with ThreadPoolExecutor(len(BACKENDS)) as pool:
        futures = {backend: pool.submit(work, backend) for backend in BACKENDS}
    return {backend: future.result() for backend, future in futures.items()}


def run_list_and_count(backend: str, run_dir: Path) -> tuple[set[str], Counts]:
    """Trains a tiny run of `backend` in a fresh process; the framework modules it loaded, and the parameter
    counts of MODEL_CASES built in that process afterwards."""
    args = [f"backend={backend}", "train.epochs=1", "train.max_steps_per_epoch=2", "run.progress=off",
            f"run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-c", RUN_LIST_AND_COUNT, json.dumps(args), backend,
                           json.dumps(MODEL_CASES)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "summary.json").is_file()
    loaded, counts = last_json(proc.stdout, "MODULES"), last_json(proc.stdout, "COUNTS")
    assert isinstance(loaded, list)
    assert isinstance(counts, dict) and counts.keys() == MODEL_CASES.keys()
    return set(loaded), counts


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[set[str], Counts]]:
    root = tmp_path_factory.mktemp("runs")
    return for_both_backends(lambda backend: run_list_and_count(backend, root / backend))


@pytest.fixture(scope="module")
def loaded_modules(probed: dict[str, tuple[set[str], Counts]]) -> dict[str, set[str]]:
    return {backend: modules for backend, (modules, _) in probed.items()}


@pytest.fixture(scope="module")
def parameter_counts(probed: dict[str, tuple[set[str], Counts]]) -> dict[str, Counts]:
    """backend -> the counts of every case in MODEL_CASES, one process per backend (not per case: importing the
    framework is what costs)."""
    return {backend: counts for backend, (_, counts) in probed.items()}


@pytest.mark.parametrize("backend, forbidden", [("torch", {"tensorflow", "keras"}), ("tensorflow", {"torch"})])
def test_run_imports_only_its_framework(loaded_modules: dict[str, set[str]], backend: str,
                                        forbidden: set[str]) -> None:
    loaded = loaded_modules[backend]
    assert loaded & forbidden == set()
    assert loaded & set(OPTIONAL_MODULES) == set()  # ~2 CPU-s of every TensorFlow rank's start (tf_backend)
    assert ("torch" if backend == "torch" else "tensorflow") in loaded


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_same_layers_and_parameter_counts_on_both_backends(parameter_counts: dict[str, Counts], case: str) -> None:
    torch_counts, tf_counts = parameter_counts["torch"][case], parameter_counts["tensorflow"][case]
    assert torch_counts == tf_counts
    assert sum(torch_counts) > 0
