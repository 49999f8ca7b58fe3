"""Both backends under real launchers: gradient averaging, uneven shards, accuracy, errors on every rank.

Equivalence tolerance: 2 ranks x batch B and 1 rank x batch 2B see the same samples at every step, so
their weights may differ only by float32 summation order: we require max |diff| <= 1e-5, while runs
that differ in the global batch differ by more than 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import max_weight_diff, read_metrics, read_summary, read_weights, run_hvdtrain
from shared_runs import batching_runs, digits_run

pytestmark = pytest.mark.distributed

PARITY_TOL = 1e-5
BACKENDS = ["torch", "tensorflow"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_equal_one_rank_with_double_batch(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Linear LR scaling (the default) gives 2 ranks optim.lr x 2: the single rank gets that LR directly. Gloo and
    # MPI each: horovodrun --gloo at 2 x 16; mpirun at 2 x 8 x accumulation 2 (shared_runs.BatchingRuns).
    runs = batching_runs(backend, tmp_path_factory)
    reference = read_weights(runs.reference)
    for name, run_dir in (("gloo", runs.gloo), ("mpi", runs.mpi)):
        summary = read_summary(run_dir)
        assert summary["world_size"] == 2 and summary["steps"] == 5
        assert summary["controller"] == name
        assert summary["steps_per_rank"] == [5, 5]
        assert summary["scaled_lr"] == pytest.approx(0.2)
        diff = max_weight_diff(read_weights(run_dir), reference)
        print(f"{backend} {name}: max |w(np=2, global batch 32) - w(np=1, B=32)| = {diff:.3g}")
        assert diff <= PARITY_TOL
    # The comparison is sensitive: a different global batch gives clearly different weights.
    assert max_weight_diff(read_weights(runs.batch16), reference) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_ranks_uneven_shards_take_equal_steps(tmp_path: Path, backend: str) -> None:
    # 100 samples, 3 ranks x 4 = 12 per global step: 8 steps, 4 samples left over each epoch.
    run_dir = tmp_path / "np3"
    run_hvdtrain([f"backend={backend}", "data.name=synthetic", "data.synthetic_samples=100",
                  "data.synthetic_shape=[8,8,1]", "data.val_fraction=0.0", "model.name=mlp",
                  "model.hidden_units=[16]", "train.epochs=2", "train.batch_size=4", "run.progress=off",
                  f"run.dir={run_dir}"], launcher="mpirun", np_=3)
    summary = read_summary(run_dir)
    assert summary["world_size"] == 3
    assert summary["steps_per_rank"] == [16, 16, 16]
    assert summary["steps"] == 16
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]


@pytest.mark.smoke  # make test-fast's one 2-rank run per backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_reaches_95_percent(backend: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Under horovodrun, which starts the ranks with mpirun here (Horovod is built with MPI): mpirun itself is the
    # launcher of the parity, checkpoint, BatchNorm, evaluate and streaming runs of both backends.
    shared = digits_run(backend, tmp_path_factory)
    run_dir, proc = shared.dir, shared.proc
    summary = read_summary(run_dir)
    metrics = read_metrics(run_dir)
    print(f"{backend}: final val_accuracy {summary['final']['val_accuracy']:.4f}, "
          f"{summary['mean_samples_per_s']:.0f} samples/s, wall {summary['wall_time_s']:.1f}s")
    assert summary["world_size"] == 2 and summary["backend"] == backend
    assert summary["final"]["val_accuracy"] >= 0.95
    assert len(metrics) == summary["epochs"] == 12
    for record in metrics:
        assert {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s",
                "samples_per_s"} <= record.keys()
        assert record["samples_per_s"] > 0
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    model_file = "model.pt" if backend == "torch" else "model.keras"
    assert (run_dir / "config.yaml").is_file() and (run_dir / model_file).is_file()
    # Rank 0 alone prints progress: one "done" line per epoch, not one per rank.
    assert proc.stdout.count("done: loss") == 12
    # One line points at the config instead of printing it (run.print_config=true prints it: test_progress.py).
    assert proc.stdout.count(f"config: {run_dir / 'config.yaml'} (run.print_config=true") == 1
    assert "resolved config:" not in proc.stdout


@pytest.mark.races
def test_bad_config_refused_on_every_rank(tmp_path: Path) -> None:
    proc = run_hvdtrain(["train.batch_size=0", f"run.dir={tmp_path / 'r'}"], launcher="gloo", np_=2,
                        check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("hvdtrain: error: config key train.batch_size: 0 is below the minimum 1") == 2
    # horovodrun itself ends with a RuntimeError traceback of its own; no rank may print one.
    assert "<stderr>:Traceback" not in out and "hvdtrain/" not in out
    assert not (tmp_path / "r").exists()


@pytest.mark.races
@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_with_different_configs_are_stopped(tmp_path: Path, backend: str) -> None:
    # The config check goes through each framework's Horovod module (hvdtrain/distributed/communicator.py):
    # fails on either backend if the ranks start training with different configs, or stop without naming the
    # key that differs.
    import subprocess
    import sys

    from conftest import REPO

    base = [sys.executable, "-m", "hvdtrain", f"backend={backend}", "run.progress=off", f"run.dir={tmp_path / 'r'}"]
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "1", *base, "optim.lr=0.1", ":",
           "-np", "1", *base, "optim.lr=0.2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    line = "hvdtrain: error: ranks resolved different configs (rank 1 has optim.lr=0.2 where rank 0 has 0.1)"
    assert proc.stderr.count(line) == 2, out[-3000:]  # reported by both ranks
    assert "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "r").exists()
