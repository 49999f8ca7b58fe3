"""Experiment tracking against a real MLflow tracking server (SQLite store, artifacts in a temporary folder, a free
port), read back with MLflow's own client: one tracker run per run.dir, equal to the run directory, across a
kill -9 and a resume; a server that stops mid-run costs one warning, and `hvdtrain sync` completes the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BIN, REPO, read_metrics, read_summary, run_hvdtrain, together

from hvdtrain.config import flatten, load_config, to_dict

pytestmark = pytest.mark.distributed
mlflow = pytest.importorskip("mlflow", reason="mlflow (requirements.txt) is not installed")

SCRIPTS = REPO / "tests" / "scripts"
PROBE = "callbacks.user=[tracking_probe:TrackingProbe]"
SHORT = ["--config", "configs/digits.yaml", "model.channels=[8]", "model.hidden_units=[16]", "train.epochs=3",
         "train.max_steps_per_epoch=4", "run.progress=lines", "run.tensorboard=false"]


class Server:
    """`mlflow server` on 127.0.0.1:port over `root` (its SQLite file and artifacts), in its own process group."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], stdout=(self.root / "server.log").open("ab"),
            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1):
                    return self
            except OSError:
                assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
                time.sleep(0.2)
        raise AssertionError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        if self.proc is not None:
            self.proc.wait(timeout=30)  # reaped (stopped here or by a test's run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("mlflow"), free_port()).start()
    yield running
    running.stop()


def tracker_runs(uri: str, experiment: str) -> list:
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


def test_a_two_rank_run_is_one_tracker_run_equal_to_its_run_directory(tmp_path: Path, server: Server) -> None:
    def job(backend: str) -> Path:
        run_dir, probe = tmp_path / backend, tmp_path / f"probe-{backend}"
        probe.mkdir()
        run_hvdtrain([*SHORT, f"backend={backend}", f"run.dir={run_dir}", "run.log_every_steps=2",
                      f"tracking.mlflow_uri={server.uri}", f"tracking.experiment=two-ranks-{backend}",
                      "tracking.tags=[team=vision]", PROBE], launcher="mpirun", np_=2,
                     env={"PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_PROBE_DIR": str(probe)})
        return run_dir

    for backend, run_dir in zip(("torch", "tensorflow"), together(*(lambda b=b: job(b) for b in
                                                                     ("torch", "tensorflow"))), strict=True):
        runs = tracker_runs(server.uri, f"two-ranks-{backend}")
        assert len(runs) == 1 and runs[0].info.run_name == backend and runs[0].data.tags["team"] == "vision"
        assert_equals_run_dir(server.uri, run_dir)
        ranks = [json.loads((tmp_path / f"probe-{backend}" / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["mlflow"] and not ranks[1]["mlflow"], ranks  # rank 0 alone imports the tracker
        other = "tensorflow" if backend == "torch" else "torch"
        assert not any(rank[other] for rank in ranks), ranks  # nor the other framework


@pytest.mark.races
def test_kill_9_then_resume_leaves_one_tracker_run_with_each_epoch_once(tmp_path: Path, server: Server) -> None:
    """Checkpoints at steps 6 and 12 only; killed at step 10, the run resumes from step 6 and does epoch 2 again,
    whose metrics the tracker already has: they are not sent twice (the exact resume gives the same values)."""
    args = [*SHORT, "backend=torch", f"run.dir={tmp_path / 'run'}", "run.log_every_steps=2",
            "checkpoint.every_epochs=0", "checkpoint.every_steps=6", f"tracking.mlflow_uri={server.uri}",
            "tracking.experiment=kill-9", "callbacks.user=[fault_callbacks:Faults]"]
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_KILL_RANK": "0", "HVDTRAIN_TEST_KILL_STEP": "10",
           "HVDTRAIN_TEST_KILL_MARKER": str(tmp_path / "killed")}
    killed = subprocess.run([sys.executable, "-m", "hvdtrain", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["sent_epochs"] == 2
    run_hvdtrain([*args, "train.resume=auto"], env={"PYTHONPATH": str(SCRIPTS)})
    assert len(tracker_runs(server.uri, "kill-9")) == 1
    assert_equals_run_dir(server.uri, tmp_path / "run", first_start={"train.resume": "None"})


@pytest.mark.races
def test_a_server_stopped_mid_run_costs_one_warning_and_sync_completes_the_run(tmp_path: Path, server: Server) -> None:
    """The module's server is stopped by the run's rank 0 after epoch 1, then started again over the same store."""
    assert server.proc is not None
    run_dir = tmp_path / "run"
    proc = run_hvdtrain([*SHORT, "backend=torch", f"run.dir={run_dir}", "run.log_every_steps=2",
                         f"tracking.mlflow_uri={server.uri}", "tracking.experiment=stopped", "tracking.timeout_s=2",
                         PROBE], env={"PYTHONPATH": str(SCRIPTS), "HVDTRAIN_TEST_SERVER_PID": str(server.proc.pid),
                                      "HVDTRAIN_TEST_SERVER_PORT": str(server.port),
                                      "HVDTRAIN_TEST_SERVER_EPOCH": "1"})
    server.start()  # the same store again (for this test's sync and any test after it)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: tracking:")]
    assert len(warnings) == 1 and f"python -m hvdtrain sync {run_dir}" in warnings[0], proc.stdout
    assert len(read_metrics(run_dir)) == 3 and read_summary(run_dir)["wall_time_s"] < 60  # trained on
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["params_sent"] and state["sent_epochs"] == 0 and not state["finished"]
    synced = run_hvdtrain(["sync", str(run_dir)])
    assert "3 epoch(s), finished" in synced.stdout
    assert_equals_run_dir(server.uri, run_dir)
