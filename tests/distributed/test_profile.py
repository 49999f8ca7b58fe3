"""`--profile` under horovodrun np=2 on both backends: the per-step breakdown adds up, the timeline is
written for the first epoch only, and the summary's fractions are those of the steps it says it counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_summary, run_hvdtrain
from shared_runs import digits_run

pytestmark = pytest.mark.distributed

PARTS = ("data_wait", "compute", "communication", "other")


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_profile_writes_breakdown_timeline_and_summary(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    # configs/digits.yaml, --profile between overrides as users type it (shared_runs.DigitsRun).
    shared = digits_run(backend, tmp_path_factory)
    run_dir, proc = shared.dir, shared.proc
    summary = read_summary(run_dir)
    steps, per_epoch = summary["steps"], summary["steps"] // summary["epochs"]
    rows = list(csv.DictReader((run_dir / "profile" / "steps.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))  # rank 0's steps, in order
    for r in rows:
        parts = [float(r[f"{p}_s"]) for p in PARTS]
        assert all(v >= 0 for v in parts)
        # Each part and the step are written rounded to microseconds: the four rounded parts and the rounded
        # step differ by at most 4 x 0.5 + 0.5 = 2.5 us (seen: 2 us, in a run of 264 steps).
        assert sum(parts) == pytest.approx(float(r["step_s"]), abs=2.5e-6 + 1e-12)
        assert r["timeline"] == ("1" if r["epoch"] == "1" else "0")  # only the first epoch is recorded
    # Two ranks exchange gradients every step: some time is spent in the allreduce.
    assert sum(float(r["communication_s"]) for r in rows) > 0

    profile = summary["profile"]
    assert profile == json.loads((run_dir / "profile" / "summary.json").read_text())
    assert profile["steps_per_rank"] == [steps - per_epoch] * 2  # epochs 2 on: without the timeline
    fractions = [profile[f"{p}_fraction"] for p in PARTS]
    assert sum(fractions) == pytest.approx(1.0)
    assert len(profile["per_rank"]) == 2
    # Rank 0's own fractions are those of its rows outside the timeline epoch.
    later = np.array([[float(r[f"{p}_s"]) for p in PARTS] for r in rows if r["epoch"] != "1"])
    expected = later.sum(axis=0) / later.sum()
    assert [profile["per_rank"][0][f"{p}_fraction"] for p in PARTS] == pytest.approx(expected, abs=1e-4)
    assert profile["mean_step_s"] > 0

    # Horovod's timeline: chrome://tracing events, one track per reduced tensor, named by it.
    events = json.loads((run_dir / "profile" / "timeline.json").read_text())
    tracks = {e["args"]["name"] for e in events if e.get("name") == "process_name" and "name" in e.get("args", {})}
    gradient = "allreduce.0.weight" if backend == "torch" else "hvdtrain.grads"
    assert any(gradient in track for track in tracks), tracks
    assert "profile: mean step" in proc.stdout and "data wait" in proc.stdout


def test_overwrite_removes_an_earlier_runs_profile(tmp_path: Path, small_config: Path) -> None:
    run_dir = tmp_path / "run"
    run_hvdtrain(["--config", str(small_config), "--profile", f"run.dir={run_dir}"])
    assert (run_dir / "profile" / "steps.csv").is_file()
    run_hvdtrain(["--config", str(small_config), f"run.dir={run_dir}", "run.overwrite=true"])
    assert not (run_dir / "profile").exists()
    assert "profile" not in read_summary(run_dir)
