"""Checkpoints and resume under a real launcher, both backends.

Exact resume: a run resumed from its epoch-3 checkpoint must end with the weights of the same run left
uninterrupted. CPU, fixed seeds, same ranks: the state (weights, optimizer slots, loss scale, step) is
restored bit for bit and the data order is a function of (seed, epoch), so we require max |diff| <= 1e-6
(in practice 0).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import run_pool
from conftest import SMALL_CONFIG, max_weight_diff, read_metrics, read_summary, read_weights, run_hvdtrain, together
from run_pool import PoolRun

pytestmark = pytest.mark.distributed

BACKENDS = ["torch", "tensorflow"]
RESUME_TOL = 1e-6


def base_args(config: Path, backend: str) -> list[str]:
    return ["--config", str(config), f"backend={backend}", "train.epochs=5", "optim.name=adam",
            "optim.lr=0.01", "policy.precision=fp16", "policy.loss_scale_growth_interval=3",
            "checkpoint.keep_last=0"]


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """Per backend, the uninterrupted np=2 run root/<backend>/full and the 1-epoch run root/<backend>/one (which
    the refusals test then writes into), pooled with other modules' runs (tests/run_pool.py)."""
    config = root / "small.yaml"
    config.write_text(SMALL_CONFIG)
    return [run for backend in BACKENDS for run in (
        PoolRun(backend, 2, (*base_args(config, backend), f"run.dir={root / backend / 'full'}")),
        PoolRun(backend, 1, (*base_args(config, backend), "train.epochs=1", f"run.dir={root / backend / 'one'}")))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_gives_the_uninterrupted_weights(tmp_path: Path, backend: str,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    root = run_pool.trained(__file__, tmp_path_factory)
    args, full = base_args(root / "small.yaml", backend), root / backend / "full"
    epochs = sorted(p.name for p in (full / "checkpoints").glob("epoch-*"))
    assert epochs == [f"epoch-{e:04d}" for e in range(1, 6)]
    assert (full / "checkpoints" / "best" / "manifest.json").is_file()

    # The interrupted run: its directory as it was after epoch 3's checkpoint.
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "epoch-0003", cut / "checkpoints" / "epoch-0003")
    shutil.copy(full / "config.yaml", cut / "config.yaml")
    run_hvdtrain([*args, "train.resume=auto", f"run.dir={cut}"], launcher="mpirun", np_=2)

    diff = max_weight_diff(read_weights(cut), read_weights(full))
    print(f"{backend}: max |w(resumed) - w(uninterrupted)| = {diff:.3g}")
    assert diff <= RESUME_TOL
    assert [m["epoch"] for m in read_metrics(cut)] == [1, 2, 3, 4, 5]
    assert read_summary(cut)["steps"] == read_summary(full)["steps"] == 25
    assert read_metrics(cut)[-1]["loss_scale"] == read_metrics(full)[-1]["loss_scale"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_checkpoints_and_used_run_dirs_are_refused(backend: str,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    root = run_pool.trained(__file__, tmp_path_factory)
    args = [*base_args(root / "small.yaml", backend), "train.epochs=1"]
    run_dir = root / backend / "one"  # this test's alone: it writes into it
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}

    other = "tensorflow" if backend == "torch" else "torch"
    refusals = {"written by a different setup": [f"backend={other}", "train.resume=auto"],
                "model.hidden_units": ["model.hidden_units=[64]", "train.resume=auto"],
                "already holds a run": []}
    procs = together(*(lambda extra=extra: run_hvdtrain([*args, *extra, f"run.dir={run_dir}"], check=False)
                       for extra in refusals.values()))
    for words, proc in zip(refusals, procs, strict=True):
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}  # nothing touched

    run_hvdtrain([*args, "run.overwrite=true", f"run.dir={run_dir}"])  # allowed when asked for
    # A process alone: Horovod's background thread wakes every 20 ms, not every 1 ms (nothing crosses it)
    assert json.loads((run_dir / "summary.json").read_text())["horovod_settings"] == {"HOROVOD_CYCLE_TIME": "20"}
    manifest = run_dir / "checkpoints" / "epoch-0001" / "manifest.json"
    manifest.write_text("{not json")
    proc = run_hvdtrain([*args, "train.resume=auto", f"run.dir={run_dir}"], check=False)
    assert proc.returncode == 2 and "unreadable or corrupt" in proc.stderr
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1
