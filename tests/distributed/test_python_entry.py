"""hvdtrain.train(...) from a script under horovodrun -np 2 (examples/train_from_python.py: a loss, a metric and a
callback as Python objects) gives the CLI's metrics (under mpirun -np 2) for the same config with the objects named
by import path; rank 0 alone prints; a bad input is one line on every rank and exit 2, no traceback."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from conftest import REPO, numbers, read_metrics, read_summary, run_hvdtrain, together

pytestmark = pytest.mark.distributed
SCRIPT = str(REPO / "examples" / "train_from_python.py")
SHORT = ["train.epochs=3", "run.progress=off"]
BY_PATH = ["--config", "configs/diabetes.yaml", "train.loss=examples.train_from_python:huber",
           "train.metrics=[mae,r2,examples.train_from_python:within_25]"]



def test_the_script_equals_the_cli_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    script, cli, bad = (partial(run_hvdtrain, launcher="horovodrun", np_=2, program=(SCRIPT,)),
                        partial(run_hvdtrain, launcher="mpirun", np_=2),
                        partial(run_hvdtrain, launcher="mpirun", np_=2, program=(SCRIPT,), check=False))
    by_script, _ = together(lambda: script([*SHORT, f"run.dir={tmp_path / 'script'}"]),
                            lambda: cli([*BY_PATH, *SHORT, f"run.dir={tmp_path / 'cli'}"]))
    refused = bad([*SHORT, "optim.lr=-1", f"run.dir={tmp_path / 'bad'}"])

    script_metrics, cli_metrics = read_metrics(tmp_path / "script"), read_metrics(tmp_path / "cli")
    assert [numbers(r) for r in script_metrics] == [numbers(r) for r in cli_metrics]
    summary = read_summary(tmp_path / "script")
    assert summary["world_size"] == 2 and summary["metrics"] == ["mae", "r2", "within_25"]
    assert summary["loss"] == "python:huber"  # defined in the script run as __main__: named in this process only
    assert by_script.stdout.count("best val_r2") == 1, by_script.stdout  # rank 0's callback line only

    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = [ln for ln in refused.stderr.splitlines() if "hvdtrain: error:" in ln]
    assert len(lines) == 2 and all("optim.lr" in ln for ln in lines), lines
    assert "Traceback" not in refused.stderr and not (tmp_path / "bad").exists()
