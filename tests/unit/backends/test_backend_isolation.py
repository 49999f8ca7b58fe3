"""Each backend in its own process: only the chosen framework is imported, and both build the same models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FRAMEWORK_MODULES = ("torch", "tensorflow", "keras")

RUN_AND_LIST_MODULES = f"""
import json, runpy, sys
sys.argv = ["hvdtrain", *json.loads(sys.argv[1])]
try:
    runpy.run_module("hvdtrain", run_name="__main__")
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("MODULES", json.dumps(sorted(m for m in {FRAMEWORK_MODULES!r} if m in sys.modules)))
"""

COUNT_PARAMETERS = """
import json, sys
from hvdtrain.config import load_config
backend, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = load_config(None, overrides)
if backend == "torch":
    from torch_backend.models import build_model
    model = build_model(cfg.model, (32, 32, 3), 10)
    counts = [p.numel() for p in model.parameters()]
else:
    import numpy as np
    from tf_backend.models import build_model
    model = build_model(cfg.model, (32, 32, 3), 10)
    counts = [int(np.prod(v.shape)) for v in model.trainable_variables]
print("COUNTS", json.dumps(counts))
"""


def last_json(out: str, tag: str) -> object:
    line = [ln for ln in out.splitlines() if ln.startswith(tag + " ")][-1]
    return json.loads(line[len(tag) + 1:])


@pytest.mark.parametrize("backend, forbidden", [("torch", {"tensorflow", "keras"}), ("tensorflow", {"torch"})])
def test_run_imports_only_its_framework(tmp_path: Path, backend: str, forbidden: set[str]) -> None:
    args = [f"backend={backend}", "train.epochs=1", "train.max_steps_per_epoch=2", "run.progress=off",
            f"run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-c", RUN_AND_LIST_MODULES, json.dumps(args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(last_json(proc.stdout, "MODULES"))
    assert loaded & forbidden == set()
    assert ("torch" if backend == "torch" else "tensorflow") in loaded
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.parametrize("overrides", [
    ["model.name=cnn", "model.channels=[16,32,64]", "model.hidden_units=[128,64]"],
    ["model.name=cnn", "model.channels=[8]", "model.hidden_units=[]", "model.dropout=0.3"],
    ["model.name=mlp", "model.hidden_units=[256,128]", "model.dropout=0.5"],
])
def test_same_layers_and_parameter_counts_on_both_backends(overrides: list[str]) -> None:
    counts = {}
    for backend in ("torch", "tensorflow"):
        proc = subprocess.run([sys.executable, "-c", COUNT_PARAMETERS, backend, json.dumps(overrides)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts[backend] = last_json(proc.stdout, "COUNTS")
    assert counts["torch"] == counts["tensorflow"]
    assert sum(counts["torch"]) > 0
