"""Long runs on clusters, with real processes and real faults: kill -9 during checkpoint writes, elastic
recovery after a killed worker, early stopping on every rank, and a stalled rank shut down by Horovod (a config
mismatch between ranks: tests/distributed/test_training.py). Faults come from tests/scripts/fault_callbacks.py,
a user callback (callbacks.user) configured by environment variables.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import run_pool
from conftest import (
    BIN,
    REPO,
    SMALL_CONFIG,
    max_weight_diff,
    read_metrics,
    read_summary,
    read_weights,
    run_hvdtrain,
    together,
)
from run_pool import PoolRun
from shared_runs import digits_run

from hvdtrain.training.checkpoint import newest

pytestmark = pytest.mark.distributed

BACKENDS = ["torch", "tensorflow"]
SCRIPTS = REPO / "tests" / "scripts"
FAULTS = "callbacks.user=[fault_callbacks:Faults]"
RESUME_TOL = 1e-6  # same as test_checkpoint.py: state is restored bit for bit (in practice 0)


def fault_env(**values: object) -> dict[str, str]:
    return {"PYTHONPATH": str(SCRIPTS), **{f"HVDTRAIN_TEST_{k.upper()}": str(v) for k, v in values.items()}}


@pytest.mark.races
@pytest.mark.parametrize("backend,kills", [("torch", 4), ("tensorflow", 2)])
def test_kill_9_during_checkpoint_writes_then_resume_equals_uninterrupted(tmp_path: Path, small_config: Path,
                                                                          backend: str, kills: int) -> None:
    """A checkpoint every step, so the kills land in or near writes; each restart resumes from the newest
    complete checkpoint (it must load), and the final weights equal the uninterrupted run's."""
    args = ["--config", str(small_config), f"backend={backend}", "train.epochs=3", "train.max_steps_per_epoch=12",
            "optim.name=adam", "optim.lr=0.01", "augment.rotation_range=15", "checkpoint.every_steps=1",
            "checkpoint.keep_last=2",
            "train.threads_per_rank=1"]  # the uninterrupted and the killed run share the two cores (and so resumes)
    full, cut = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, "-m", "hvdtrain", *args, f"run.dir={cut}", "train.resume=auto"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def kill_repeatedly() -> int:
        """Starts the run `kills` times and kills it a few checkpoints in; the newest checkpoint's step."""
        rng = random.Random(7)
        last_step = 0
        for _ in range(kills):
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            target = last_step + rng.randint(1, 5)  # a few steps into this process's own checkpoints
            deadline = time.monotonic() + 300
            while True:
                found = newest(cut)
                if found is not None and found.state.step >= target:
                    break
                assert proc.poll() is None, f"run exited {proc.returncode} before it was killed: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "no new checkpoint within 300 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.03))  # somewhere within the next step or checkpoint write
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            found = newest(cut)  # raises if the newest complete checkpoint were unreadable
            assert found is not None and found.state.step >= last_step
            leftovers = [p.name for p in (cut / "checkpoints").glob(".*")]
            print(f"killed after checkpoint step {found.state.step}; half-written leftovers: {leftovers}")
            last_step = found.state.step
        return last_step

    # The uninterrupted run at the same time as the killed ones: each is one process, and there are two cores.
    _, last_step = together(lambda: run_hvdtrain([*args, f"run.dir={full}"]), kill_repeatedly)
    assert last_step < 36, "the run finished before the last kill: nothing was interrupted"

    run_hvdtrain([*args, f"run.dir={cut}", "train.resume=auto"])
    diff = max_weight_diff(read_weights(cut), read_weights(full))
    print(f"{backend}: {kills} kills; max |w(resumed) - w(uninterrupted)| = {diff:.3g}")
    assert diff <= RESUME_TOL
    assert [m["epoch"] for m in read_metrics(cut)] == [1, 2, 3]
    assert read_summary(cut)["steps"] == read_summary(full)["steps"] == 36
    assert not list((cut / "checkpoints").glob(".*")), "half-written checkpoints were left behind"
    assert len(list((cut / "checkpoints").glob("epoch-*"))) == 2  # keep_last


@pytest.mark.races
def test_elastic_job_survives_a_killed_worker_and_grows_back(tmp_path: Path, mlflow_server: Any) -> None:
    """Two "hosts" on this machine (localhost and 127.0.0.1, one slot each). Rank 1 is killed with SIGKILL at
    step 30 (epoch 2); rank 0 rolls back to the commit of step 25 and goes on alone; after the blacklist
    cooldown the host is back and the job grows to 2 ranks again. Both backends' jobs at once: much of their
    time is spent waiting (the cooldown, host discovery, the steps' sleeps). Tracked with MLflow: the restarts
    keep one tracker run, its history equal to metrics.jsonl."""

    def elastic(backend: str) -> subprocess.CompletedProcess:
        root = tmp_path / backend
        root.mkdir()
        hosts = root / "hosts"
        hosts.write_text("localhost:1\n127.0.0.1:1\n")
        discovery = root / "discover.sh"
        discovery.write_text(f"#!/bin/sh\ncat {hosts}\n")
        discovery.chmod(0o755)
        prefix = [str(BIN / "horovodrun"), "-np", "2", "--min-np", "1", "--max-np", "2", "--host-discovery-script",
                  str(discovery), "--blacklist-cooldown-range", "2", "4"]
        return run_hvdtrain(["--config", "configs/digits.yaml", f"backend={backend}", "train.epochs=6",
                             f"run.dir={root / 'run'}", "run.progress=lines", "elastic.commit_every_steps=5", FAULTS,
                             # one thread a rank: the two "hosts" share this machine's cores (each alone would
                             # take them all), and both backends' jobs run at once
                             "train.threads_per_rank=1",
                             f"tracking.mlflow_uri={mlflow_server.uri}", f"tracking.experiment=elastic-{backend}"],
                            prefix=prefix, env=fault_env(kill_rank=1, kill_step=30, kill_marker=root / "killed",
                                                         step_sleep=0.05))

    for backend, proc in zip(BACKENDS, together(*(partial(elastic, b) for b in BACKENDS)), strict=True):
        run_dir = tmp_path / backend / "run"
        killed_pid, killed_step = (tmp_path / backend / "killed").read_text().split()
        assert int(killed_step) == 30
        assert "elastic reset: 1 rank(s) now; continuing epoch 2 at sample 192, step 25" in proc.stdout, backend
        assert "elastic reset: 2 rank(s) now" in proc.stdout, backend
        metrics = read_metrics(run_dir)
        sizes = [m["world_size"] for m in metrics]
        summary = read_summary(run_dir)
        print(f"{backend}: killed pid {killed_pid} (rank 1) at step 30; world size per epoch {sizes}; "
              f"val accuracy per epoch {[round(m['val_accuracy'], 3) for m in metrics]}")
        assert [m["epoch"] for m in metrics] == [1, 2, 3, 4, 5, 6] and summary["epochs"] == 6
        assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2
        assert summary["world_size"] == 2 and summary["elastic"] is True
        assert len(set(summary["steps_per_rank"])) == 1
        # The normal band for 6 digits epochs at np=2 is 0.95-0.99; recovery costs a little.
        assert metrics[-1]["val_accuracy"] >= 0.90
        # The LR followed the world size: x2 at np=2, x1 at np=1 (linear scaling of optim.lr 0.025).
        assert {round(m["lr"], 6) for m in metrics if m["world_size"] == 1} == {0.025}
        assert {round(m["lr"], 6) for m in metrics if m["world_size"] == 2} == {0.05}
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_server.uri)
        (tracked,) = client.search_runs([client.get_experiment_by_name(f"elastic-{backend}").experiment_id])
        assert tracked.info.status == "FINISHED"
        history = sorted((m.step, m.value) for m in client.get_metric_history(tracked.info.run_id, "world_size"))
        assert history == [(m["step"], m["world_size"]) for m in metrics]


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """root/<backend>/patience: with lr=0 the validation loss never improves after epoch 1, so patience 2 stops
    after epoch 3 (np=2; pooled with other modules' runs, tests/run_pool.py)."""
    config = root / "small.yaml"
    config.write_text(SMALL_CONFIG)
    return [PoolRun(backend, 2, ("--config", str(config), f"backend={backend}", "train.epochs=10", "optim.lr=0",
                                 "callbacks.early_stopping_metric=val_loss", "callbacks.early_stopping_patience=2",
                                 f"run.dir={root / backend / 'patience'}")) for backend in BACKENDS]


@pytest.mark.races
@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_stops_every_rank_after_the_same_epoch(tmp_path: Path, small_config: Path, backend: str,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    patient = run_pool.trained(__file__, tmp_path_factory) / backend / "patience"
    summary = read_summary(patient)
    assert summary["stopped_early"] is True and summary["epochs"] == 3
    assert summary["steps_per_rank"] == [15, 15]  # 5 steps per epoch on both ranks
    assert len(read_metrics(patient)) == 3

    # Only rank 1's callback asks to stop, after epoch 2: both ranks stop there.
    asked = tmp_path / "asked"
    run_hvdtrain(["--config", str(small_config), f"backend={backend}", "train.epochs=10", FAULTS,
                  f"run.dir={asked}"], launcher="mpirun", np_=2, env=fault_env(stop_rank=1, stop_epoch=2))
    summary = read_summary(asked)
    assert summary["stopped_early"] is True and summary["epochs"] == 2
    assert summary["steps_per_rank"] == [10, 10]


@pytest.mark.races
def test_a_stalled_rank_is_shut_down_with_a_message(tmp_path: Path, small_config: Path) -> None:
    """Both backends' jobs at once: most of their time is spent waiting on Horovod's stall timers."""

    def stalled(backend: str) -> tuple[subprocess.CompletedProcess, float]:
        start = time.monotonic()
        proc = run_hvdtrain(["--config", str(small_config), f"backend={backend}", "train.epochs=3",
                             f"run.dir={tmp_path / backend}", "horovod.stall_check_time_s=2",
                             "horovod.stall_shutdown_time_s=6", FAULTS],
                            launcher="mpirun", np_=2, check=False, timeout=300,
                            env=fault_env(stall_rank=1, stall_epoch=1))
        return proc, time.monotonic() - start

    for backend, (proc, elapsed) in zip(BACKENDS, together(*(partial(stalled, b) for b in BACKENDS)), strict=True):
        print(f"{backend}: exit {proc.returncode} after {elapsed:.0f} s")
        assert proc.returncode == 1, (backend, proc.stderr[-3000:])
        assert "Missing ranks" in proc.stderr, backend  # Horovod's stall warning, naming rank 1
        assert "hvdtrain: error: Horovod shut the job down" in proc.stderr, backend
        assert "Traceback" not in proc.stderr, backend
        assert elapsed < 120, backend  # rank 1 sleeps for an hour: nothing may wait for it


def test_tensorboard_events_of_real_runs_and_their_plot(tmp_path: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rank 0 alone writes one events file per run, holding what metrics.jsonl holds; `plot` overlays the runs
    (shared_runs.DigitsRun: np=2, steps.jsonl and step scalars every 2 steps)."""
    shared = [digits_run(backend, tmp_path_factory) for backend in BACKENDS]
    out = tmp_path / "compare.png"

    def read_events(run_dir: Path) -> Callable[[], subprocess.CompletedProcess]:
        return lambda: subprocess.run([sys.executable, str(SCRIPTS / "read_events.py"), str(run_dir / "tensorboard")],
                                      capture_output=True, text=True, timeout=300, check=True)

    # Three independent processes at once: each run's events read back, and the plot of both.
    *reads, plotted = together(*(read_events(run.dir) for run in shared),
                               lambda: subprocess.run([sys.executable, "-m", "hvdtrain", "plot",
                                                       *(str(run.dir) for run in shared), "--out", str(out)],
                                                      cwd=REPO, capture_output=True, text=True, timeout=300))
    for run, proc in zip(shared, reads, strict=True):
        summary = read_summary(run.dir)
        per_epoch = summary["steps"] // summary["epochs"]
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert records[0] == {"files": 1}
        values = {(r["step"], r["tag"]): r["value"] for r in records if "tag" in r}
        for epoch in read_metrics(run.dir):
            for key in ("train_loss", "val_accuracy", "lr", "samples_per_s"):
                assert values[(per_epoch * epoch["epoch"], f"epoch/{key}")] == pytest.approx(epoch[key], rel=1e-6)
        every = run.log_every_steps
        assert {step for step, tag in values if tag == "step/loss"} == set(range(every, summary["steps"] + 1, every))
    assert plotted.returncode == 0, plotted.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
