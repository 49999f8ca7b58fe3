"""Experiment tracking against a real MLflow tracking server (SQLite store, artifacts in a temporary folder, a free
port), read back with MLflow's own client: one tracker run per run.dir, equal to the run directory, across a
kill -9 and a resume; a server that stops mid-run costs one warning, and `hvdtrain sync` completes the run.
Weights & Biases in offline mode, read back with wandb's own file reader (tests/wandb_reader.py), and a tracker
of the user's (examples/csv_tracker.py) ride on the same runs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, read_metrics, read_summary, run_hvdtrain, together
from mlflow_server import Server
from wandb_reader import offline_runs

from hvdtrain.config import flatten, load_config, to_dict

pytestmark = pytest.mark.distributed
mlflow = pytest.importorskip("mlflow", reason="mlflow (requirements.txt) is not installed")
pytest.importorskip("wandb", reason="wandb (requirements.txt) is not installed")

SCRIPTS = REPO / "tests" / "scripts"
USER_PATH = os.pathsep.join([str(SCRIPTS), str(REPO / "examples")])  # the probe callback; the CSV tracker
PROBE = "callbacks.user=[tracking_probe:TrackingProbe]"
SHORT = ["--config", "configs/digits.yaml", "model.channels=[8]", "model.hidden_units=[16]", "train.epochs=3",
         "train.max_steps_per_epoch=4", "run.progress=lines", "run.tensorboard=false"]


def tracker_runs(uri: str, experiment: str) -> list:
    """The MLflow runs of `experiment`, read with MLflow's own client."""
    client = mlflow.tracking.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def assert_equals_run_dir(uri: str, run_dir: Path, first_start: dict[str, str] | None = None) -> None:
    """The tracker run of run_dir (tracking.json) holds its config as parameters (as of the run's first start:
    `first_start` gives the keys a later start changed), metrics.jsonl's rows as epoch metrics at each epoch's
    last step (one value per epoch: nothing sent twice), steps.jsonl's as step/*, and config.yaml and
    summary.json as artifacts, and is finished."""
    client = mlflow.tracking.MlflowClient(uri)
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    config = load_config(run_dir / "config.yaml")
    assert run.data.params == {**{k: str(v) for k, v in flatten(to_dict(config)).items()}, **(first_start or {})}
    rows = read_metrics(run_dir)
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "world_size"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(row["step"], pytest.approx(row[key], rel=1e-12)) for row in rows], key
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "step/loss"))
    assert history == [(row["step"], pytest.approx(row["loss"], rel=1e-12)) for row in steps]
    assert {"config.yaml", "summary.json"} <= {f.path for f in client.list_artifacts(run_id)}
    summary = read_summary(run_dir)
    assert run.data.tags["system.backend"] == summary["backend"]
    assert run.data.tags["system.world_size"] == str(summary["world_size"])


def assert_wandb_equals_run_dir(run_dir: Path, first_start: dict[str, str] | None = None) -> None:
    """run_dir's W&B offline runs (all with tracking-wandb.json's id) hold the config, metrics.jsonl's rows at
    each epoch's last step and steps.jsonl's as step/*, each row once, and config.yaml and summary.json among
    the last one's files."""
    runs = offline_runs(run_dir)
    run_id = json.loads((run_dir / "tracking-wandb.json").read_text())["run_id"]
    assert runs and {run.run_id for run in runs} == {run_id}
    config = load_config(run_dir / "config.yaml")
    assert runs[0].config == {**{k: str(v) for k, v in flatten(to_dict(config)).items()}, **(first_start or {})}
    history = [row for run in runs for row in run.history]
    epochs = [row for row in history if "epoch" in row]
    assert [row["_step"] for row in epochs] == [row["step"] for row in read_metrics(run_dir)]
    for row, logged in zip(read_metrics(run_dir), epochs, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "lr", "world_size", "epoch"):
            assert logged[key] == pytest.approx(row[key], rel=1e-12), key
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [(row["_step"], row["step/loss"]) for row in history if "step/loss" in row] == \
        [(row["step"], pytest.approx(row["loss"], rel=1e-12)) for row in steps]
    assert {"hvdtrain/config.yaml", "hvdtrain/summary.json"} <= runs[-1].files


def test_a_two_rank_run_is_one_tracker_run_equal_to_its_run_directory(tmp_path: Path, mlflow_server: Server) -> None:
    """MLflow, W&B (offline) and the CSV tracker of examples/ at once, on both backends."""
    def job(backend: str) -> Path:
        run_dir, probe = tmp_path / backend, tmp_path / f"probe-{backend}"
        probe.mkdir()
        run_hvdtrain([*SHORT, f"backend={backend}", f"run.dir={run_dir}", "run.log_every_steps=2",
                      f"tracking.mlflow_uri={mlflow_server.uri}", f"tracking.experiment=two-ranks-{backend}",
                      "tracking.tags=[team=vision]", "tracking.wandb_project=hvdtrain-tests",
                      "tracking.user=csv_tracker:make_tracker", PROBE], launcher="mpirun", np_=2,
                     env={"PYTHONPATH": USER_PATH, "HVDTRAIN_TEST_PROBE_DIR": str(probe)})
        return run_dir

    for backend, run_dir in zip(("torch", "tensorflow"), together(*(lambda b=b: job(b) for b in
                                                                     ("torch", "tensorflow"))), strict=True):
        runs = tracker_runs(mlflow_server.uri, f"two-ranks-{backend}")
        assert len(runs) == 1 and runs[0].info.run_name == backend and runs[0].data.tags["team"] == "vision"
        assert_equals_run_dir(mlflow_server.uri, run_dir)
        ranks = [json.loads((tmp_path / f"probe-{backend}" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["mlflow"] and not ranks[1]["mlflow"], ranks  # rank 0 alone imports the trackers
        assert ranks[0]["wandb"] and not ranks[1]["wandb"], ranks
        assert_wandb_equals_run_dir(run_dir)
        (wandb_run,) = offline_runs(run_dir)
        assert (wandb_run.project, wandb_run.name) == ("hvdtrain-tests", backend)
        with (run_dir / "tracked.csv").open() as f:  # the user's tracker: rank 0 alone, each epoch once
            assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3]
        other = "tensorflow" if backend == "torch" else "torch"
        assert not any(rank[other] for rank in ranks), ranks  # nor the other framework


@pytest.mark.races
def test_kill_9_then_resume_leaves_one_tracker_run_with_each_epoch_once(tmp_path: Path, mlflow_server: Server) -> None:
    """Checkpoints at steps 6 and 12 only; killed at step 10, the run resumes from step 6 and does epoch 2 again,
    whose metrics the trackers already have: they are not sent twice (the exact resume gives the same values).
    W&B writes its local run only when it finishes: the killed start's folder holds nothing and is set aside,
    and the resumed start's holds every row (same id)."""
    args = [*SHORT, "backend=torch", f"run.dir={tmp_path / 'run'}", "run.log_every_steps=2",
            "checkpoint.every_epochs=0", "checkpoint.every_steps=6", f"tracking.mlflow_uri={mlflow_server.uri}",
            "tracking.experiment=kill-9", "tracking.wandb_project=hvdtrain-tests",
            "callbacks.user=[fault_callbacks:Faults]"]
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_KILL_RANK": "0", "HVDTRAIN_TEST_KILL_STEP": "10",
           "HVDTRAIN_TEST_KILL_MARKER": str(tmp_path / "killed")}
    killed = subprocess.run([sys.executable, "-m", "hvdtrain", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["sent_epochs"] == 2
    run_hvdtrain([*args, "train.resume=auto"], env={"PYTHONPATH": str(SCRIPTS)})
    assert len(tracker_runs(mlflow_server.uri, "kill-9")) == 1
    assert_equals_run_dir(mlflow_server.uri, tmp_path / "run", first_start={"train.resume": "None"})
    assert_wandb_equals_run_dir(tmp_path / "run")  # the closed start's config: the resumed one's
    assert len(offline_runs(tmp_path / "run")) == 1
    assert len(list((tmp_path / "run" / "wandb").glob("unclosed-offline-run-*"))) == 1
    # `evaluate` afterwards adds eval.json and its metrics (eval/*, at the run's last step) to the same MLflow run.
    run_hvdtrain(["evaluate", str(tmp_path / "run")])
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    run_id = json.loads((tmp_path / "run" / "tracking.json").read_text())["run_id"]
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "eval.json" in {f.path for f in client.list_artifacts(run_id)}
    (logged,) = client.get_metric_history(run_id, "eval/val_loss")
    assert (logged.value, logged.step) == (pytest.approx(evaluation["val_loss"], rel=1e-12),
                                           read_metrics(tmp_path / "run")[-1]["step"])


@pytest.mark.races
def test_a_server_stopped_mid_run_costs_one_warning_and_sync_completes_the_run(tmp_path: Path,
                                                                             mlflow_server: Server) -> None:
    """The session's server (tests/conftest.py) is stopped by the run's rank 0 after epoch 1, then started again
    over the same store."""
    server = mlflow_server
    assert server.proc is not None
    run_dir = tmp_path / "run"
    proc = run_hvdtrain([*SHORT, "backend=torch", f"run.dir={run_dir}", "run.log_every_steps=2",
                         f"tracking.mlflow_uri={server.uri}", "tracking.experiment=stopped", "tracking.timeout_s=2",
                         PROBE], env={"PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_SERVER_PID": str(server.proc.pid),
                                      "HVDTRAIN_TEST_SERVER_PORT": str(server.port),
                                      "HVDTRAIN_TEST_SERVER_EPOCH": "1"})
    mlflow_server.start()  # the same store again (for this test's sync and any test after it)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: tracking:")]
    assert len(warnings) == 1 and f"python -m hvdtrain sync {run_dir}" in warnings[0], proc.stdout
    assert len(read_metrics(run_dir)) == 3 and read_summary(run_dir)["wall_time_s"] < 60  # trained on
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["params_sent"] and state["sent_epochs"] == 0 and not state["finished"]
    synced = run_hvdtrain(["sync", str(run_dir)])
    assert "3 epoch(s), finished" in synced.stdout
    assert_equals_run_dir(mlflow_server.uri, run_dir)
