"""`hvdtrain sweep` through the real CLI: trials as local processes and under horovodrun, failed trials,
timeouts, a stopped sweep's partial results, and input refused before anything runs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, REPO, SMALL_CONFIG, read_summary, run_hvdtrain, together
from wandb_reader import offline_runs

from hvdtrain.config import load_config

pytestmark = pytest.mark.distributed

TINY = ["train.epochs=1", "train.max_steps_per_epoch=5", "model.channels=[8]", "run.tensorboard=false"]


def read_csv(out: Path) -> list[dict[str, str]]:
    with (out / "sweep.csv").open() as f:
        return list(csv.DictReader(f))


def table_rows(stdout: str) -> list[list[str]]:
    """The printed table's rows (header first), split into cells."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("rank "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("wrote "))
    return [ln.split() for ln in lines[start:end]]


def running_with(marker: str) -> list[int]:
    """Ids of processes whose command line mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> dict[str, tuple[Any, Path]]:
    """The finished sweeps of the three tests below, {name: (process, out folder)}, all started at once: a local
    sweep runs one trial process at a time, mostly one core importing and starting, and the machine has two.
    The grid's trials are tracked: one MLflow parent run for the sweep, the 4 trials nested under it; W&B
    (offline): the trials' runs in one group (docs/tracking.md)."""
    root = tmp_path_factory.mktemp("sweeps")
    config = root / "small.yaml"
    config.write_text(SMALL_CONFIG)
    base = ["sweep", "--config", str(config), *TINY]
    missing = root / "missing.npz"
    # load_config accepts data.path of a file that does not exist; only the run finds out.
    commands = {
        "grid": ([*base, f"tracking.mlflow_uri={mlflow_server.uri}", "tracking.experiment=sweep-grid",
                  "tracking.wandb_project=hvdtrain-tests", "--grid", "optim.lr=0.05,0.1",
                  "model.hidden_units=[16],[32]"], True),
        # One trial per backend, as a grid over `backend` (as cheap as the two torch trials it replaces).
        "horovodrun": ([*base, "--grid", "backend=torch,tensorflow", "optim.lr=0.05", "--launcher",
                        "horovodrun -np 2 -H localhost:2"], True),
        "failed": ([*base, f"data.path={missing}", "--grid", "data.name=npz,digits", "--metric", "val_loss"], True),
        "none_succeeded": ([*base, f"data.path={missing}", "data.name=npz", "--grid", "optim.lr=0.1"], False),
    }

    def start(name: str) -> Callable[[], Any]:
        args, check = commands[name]
        return lambda: run_hvdtrain([*args, "--out", str(root / name)], check=check)

    procs = together(*(start(name) for name in commands))
    return {name: (proc, root / name) for name, proc in zip(commands, procs, strict=True)}


def test_two_by_two_grid(sweeps: dict[str, tuple[Any, Path]], mlflow_server: Any) -> None:
    proc, out = sweeps["grid"]
    rows = read_csv(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    assert {(r["optim.lr"], r["model.hidden_units"]) for r in rows} == {
        ("0.05", "[16]"), ("0.05", "[32]"), ("0.1", "[16]"), ("0.1", "[32]")}
    for r in rows:
        summary = read_summary(Path(r["run_dir"]))
        assert summary["world_size"] == 1 and summary["epochs"] == 1 == int(r["epochs"])
        assert float(r["val_accuracy"]) == summary["best"]["val_accuracy"]  # one epoch: its value is the best
        assert (out / f"{r['trial']}.log").is_file()

    # The table lists the trials best first, ranks 1..4, as the csv's rank column says.
    table = table_rows(proc.stdout)
    assert table[0][:6] == ["rank", "trial", "status", "optim.lr", "model.hidden_units", "val_accuracy"]
    accuracies = [float(cells[5]) for cells in table[1:]]
    assert len(accuracies) == 4 and accuracies == sorted(accuracies, reverse=True)
    by_trial = {r["trial"]: r for r in rows}
    assert [cells[0] for cells in table[1:]] == ["1", "2", "3", "4"]
    assert [by_trial[cells[1]]["rank"] for cells in table[1:]] == ["1", "2", "3", "4"]

    # best.yaml is the rank-1 trial's resolved config.
    best_row = next(r for r in rows if r["rank"] == "1")
    assert float(best_row["val_accuracy"]) == max(float(r["val_accuracy"]) for r in rows)
    best = load_config(out / "best.yaml")
    assert best == load_config(Path(best_row["run_dir"]) / "config.yaml")
    assert best.optim.lr == float(best_row["optim.lr"])
    assert list(best.model.hidden_units) == [int(best_row["model.hidden_units"].strip("[]"))]
    assert best.model.channels == (8,) and best.train.max_steps_per_epoch == 5  # overrides reach every trial
    assert f"best: {best_row['trial']}" in proc.stdout

    # MLflow: a finished parent run with the best value, and each trial a child with its final metrics.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-grid").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 5 and len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["best_val_accuracy"] == float(best_row["val_accuracy"])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(children) == sorted(r["trial"] for r in rows)
    for r in rows:
        assert children[r["trial"]].data.metrics["val_accuracy"] == float(r["val_accuracy"])
        assert children[r["trial"]].data.params["optim.lr"] == r["optim.lr"]
        (wandb_run,) = offline_runs(Path(r["run_dir"]))
        assert wandb_run.group == f"sweep-{out.name}" and wandb_run.config["optim.lr"] == r["optim.lr"]
        assert [row["val_accuracy"] for row in wandb_run.history] == [float(r["val_accuracy"])]


def test_trials_under_horovodrun(sweeps: dict[str, tuple[Any, Path]]) -> None:
    # Fails if a trial ran on the other backend or on one rank, if the sweep cannot read a TensorFlow run's
    # results, or if the grid's values did not reach the trials.
    proc, out = sweeps["horovodrun"]
    rows = read_csv(out)
    assert [(r["backend"], r["status"], r["world_size"]) for r in rows] == [("torch", "ok", "2"),
                                                                            ("tensorflow", "ok", "2")], rows
    for r in rows:
        summary = read_summary(Path(r["run_dir"]))
        assert summary["backend"] == r["backend"] and summary["world_size"] == 2
        assert summary["base_lr"] == float(r["optim.lr"]) == 0.05 and summary["steps"] == 5
        assert float(r["val_accuracy"]) == summary["best"]["val_accuracy"]  # read from this trial's own run
        assert (out / f"{r['trial']}.log").read_text().startswith("# horovodrun -np 2 -H localhost:2 ")
    best = next(r for r in rows if r["rank"] == "1")
    assert load_config(out / "best.yaml").backend == best["backend"]
    assert f"best: {best['trial']}" in proc.stdout


def test_failed_trial_is_recorded_and_the_sweep_goes_on(sweeps: dict[str, tuple[Any, Path]]) -> None:
    (proc, out), (proc2, out2) = sweeps["failed"], sweeps["none_succeeded"]
    rows = read_csv(out)
    assert [(r["trial"], r["status"]) for r in rows] == [("trial-001", "failed"), ("trial-002", "ok")]
    failed, ok = rows
    assert failed["exit_code"] == "2" and failed["error"].startswith("hvdtrain: error:")
    assert "missing.npz" in failed["error"] and failed["val_loss"] == "" and failed["rank"] == ""
    assert ok["rank"] == "1" and float(ok["val_loss"]) > 0
    assert load_config(out / "best.yaml").data.name == "digits"
    table = table_rows(proc.stdout)
    assert [cells[:2] for cells in table[1:]] == [["1", "trial-002"], ["trial-001", "failed"]]  # failed last
    assert "failed: hvdtrain: error:" in proc.stdout

    # A sweep in which no trial succeeds exits 1 with one line, after recording every trial.
    assert proc2.returncode == 1, proc2.stderr
    assert proc2.stderr.strip().splitlines() == [f"hvdtrain: error: no trial succeeded (1 failed): read their "
                                                 f"logs, {out2}/trial-*.log"]
    assert [r["status"] for r in read_csv(out2)] == ["failed"] and not (out2 / "best.yaml").exists()


@pytest.mark.races
def test_timeout_and_unknown_metric(tmp_path: Path, small_config: Path) -> None:
    # A trial past --timeout is stopped, and an unknown --metric stops the sweep after the first trial that
    # finishes, naming the metrics there are: both sweeps at once.
    slow, out = tmp_path / "slow", tmp_path / "metric"
    timed_out, proc = together(
        lambda: run_hvdtrain(["sweep", "--config", str(small_config), *TINY, "--grid", "optim.lr=0.1", "--timeout",
                              "0.5", "--out", str(slow)], check=False),
        lambda: run_hvdtrain(["sweep", "--config", str(small_config), *TINY, "--grid", "optim.lr=0.1,0.2",
                              "--metric", "val_acc", "--out", str(out)], check=False))
    assert timed_out.returncode == 1, timed_out.stderr
    (row,) = read_csv(slow)
    assert row["status"] == "failed" and row["error"] == "timed out after 0.5s" and row["exit_code"] == ""
    assert not running_with(str(slow / "trial-001"))

    assert proc.returncode == 2
    assert "--metric val_acc is not in" in proc.stderr and "val_accuracy" in proc.stderr
    assert len(read_csv(out)) == 1 and not (out / "trial-002.log").exists()


@pytest.mark.races
def test_stopped_sweep_leaves_valid_partial_results(tmp_path: Path, small_config: Path) -> None:
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "hvdtrain", "sweep", "--config", str(small_config), *TINY, "--grid",
           "optim.lr=0.05,0.1,0.2", "--out", str(out)]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "sweep.csv").exists() and (out / "trial-002.log").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # while trial-002 runs
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "sweep stopped during trial-002: 1 finished trials" in stderr
    rows = read_csv(out)
    assert [(r["trial"], r["status"]) for r in rows] == [("trial-001", "ok")]
    assert not running_with(str(out / "trial-002"))  # the running trial was stopped with the sweep
    assert not (out / "trial-003.log").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--grid", "optim.lrr=0.1,0.2"], "trial-001 (optim.lrr=0.1): unknown config key 'optim.lrr'"),
    (["--grid", "optim.lr=0.1,-1"], "trial-002 (optim.lr=-1): config key optim.lr: -1.0 is below the minimum"),
    (["--grid", "model.channels=[8],[16"], "--grid 'model.channels=[8],[16': missing closing ]"),
    (["--grid", "optim.lr=0.1,,0.2"], "has an empty value"),
    (["--grid", "optim.lr"], "is not key=v1,v2"),
    (["--grid", "run.dir=a,b"], "run.dir is set per trial"),
    (["--grid", "optim.lr=0.1", "--launcher", "no-such-launcher -np 2"], "'no-such-launcher' not found"),
    (["--grid", "optim.lr=0.1", "--launcher", "horovodrun -H 'localhost:2"], "fix the quoting"),
    (["--config", "no/such.yaml", "--grid", "optim.lr=0.1"], "config file 'no/such.yaml' not found"),
    (["--metric", "val_loss"], "needs at least one --grid"),
    (["--grid", "optim.lr=0.1", "--timeout", "0"], "--timeout 0 is not a positive number"),
])
def test_bad_input_runs_nothing(tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "sweep"
    proc = run_hvdtrain(["sweep", *args, "--out", str(out)], check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("hvdtrain: error: ") and fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_dry_run_and_existing_out(tmp_path: Path, small_config: Path) -> None:
    out = tmp_path / "sweep"
    proc = run_hvdtrain(["sweep", "--config", str(small_config), "--grid", "optim.lr=0.05,0.1",
                         "model.hidden_units=[16],[32]", "--out", str(out), "--dry-run", "--", "train.epochs=2"])
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and lines[-1] == "4 trials (dry run: nothing run)"
    assert lines[3].endswith(f"train.epochs=2 optim.lr=0.1 'model.hidden_units=[32]' run.dir={out}/trial-004 "
                             "run.overwrite=true")
    assert not out.exists()

    out.mkdir()
    (out / "sweep.csv").write_text("an earlier sweep\n")
    proc = run_hvdtrain(["sweep", "--grid", "optim.lr=0.1", "--out", str(out)], check=False)
    assert proc.returncode == 2 and "already exists and is not an empty folder" in proc.stderr
    assert (out / "sweep.csv").read_text() == "an earlier sweep\n"
