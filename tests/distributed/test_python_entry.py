"""hvdtrain.train(...) from a script under horovodrun -np 2 (examples/train_from_python.py: a loss, a metric and a
callback as Python objects) gives the CLI's metrics (under mpirun -np 2) for the same config with the objects named
by import path; rank 0 alone prints; a bad input is one line on every rank and exit 2, no traceback; a script that
calls it again trains again in the same processes (tests/scripts/train_twice.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from conftest import REPO, numbers, read_metrics, read_summary, run_hvdtrain, together

pytestmark = pytest.mark.distributed
SCRIPT = str(REPO / "examples" / "train_from_python.py")
TWICE = str(REPO / "tests" / "scripts" / "train_twice.py")  # hvdtrain.train again in the same processes
SHORT = ["train.epochs=3", "run.progress=off"]
BY_PATH = ["--config", "configs/diabetes.yaml", "train.loss=examples.train_from_python:huber",
           "train.metrics=[mae,r2,examples.train_from_python:within_25]"]



def test_the_script_equals_the_cli_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    script, cli, bad = (partial(run_hvdtrain, launcher="horovodrun", np_=2, program=(SCRIPT,)),
                        partial(run_hvdtrain, launcher="mpirun", np_=2),
                        partial(run_hvdtrain, launcher="mpirun", np_=2, program=(SCRIPT,), check=False))
    twice = partial(run_hvdtrain, launcher="mpirun", np_=2, program=(TWICE,), check=False)
    by_script, _, again = together(lambda: script([*SHORT, f"run.dir={tmp_path / 'script'}"]),
                                   lambda: cli([*BY_PATH, *SHORT, f"run.dir={tmp_path / 'cli'}"]),
                                   lambda: twice([*SHORT, f"run.dir={tmp_path / 'twice'}"]))
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

    # A second hvdtrain.train in the same processes (Horovod, and MPI, started once) trains the same run again:
    # equal metrics, so nothing of the first run leaks into it. A third asking for another Horovod setting is
    # refused on every rank in one line, before anything is written.
    first, second = read_metrics(tmp_path / "twice" / "first"), read_metrics(tmp_path / "twice" / "second")
    assert len(first) == 3 and [numbers(r) for r in first] == [numbers(r) for r in second]
    assert read_summary(tmp_path / "twice" / "second")["world_size"] == 2
    assert again.returncode == 2, again.stdout[-2000:] + again.stderr[-2000:]
    lines = [ln for ln in again.stderr.splitlines() if "hvdtrain: error:" in ln]
    assert len(lines) == 2 and all("horovod.* or run.profile differs" in ln for ln in lines), lines
    assert "Traceback" not in again.stderr and not (tmp_path / "twice" / "third").exists()
