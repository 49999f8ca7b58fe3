"""Shared test helpers: run hvdtrain as real processes, alone or under horovodrun / mpirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from launch_count import LaunchCounter

REPO = Path(__file__).resolve().parents[1]
# Waiting MPI ranks yield their core instead of spinning. These machines have two cores and the suite often runs
# three or four ranks at once (a job beside another, an np=2 job beside an np=1 process): a spinning rank takes
# the core its peer needs. Measured (two 3-epoch torch jobs at np=2 at once): 10.4-11.7 s spinning, 7.3-7.7 s
# yielding; one job alone 4.2-4.5 s against 3.7-4.2 s. Collectives compute the same either way.
os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT_S = 600


def launcher_prefix(launcher: str, np_: int) -> list[str]:
    """The command words that start `np_` ranks with the named launcher."""
    if launcher == "single":
        assert np_ == 1
        return []
    if launcher == "horovodrun":  # Horovod's own launcher; picks MPI here since Horovod is built with it
        return [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}"]
    if launcher == "gloo":
        return [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}"]
    if launcher == "mpirun":
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(np_)]
    raise ValueError(launcher)


def run_hvdtrain(args: list[str], *, launcher: str = "single", np_: int = 1, cwd: Path | None = None,
                 check: bool = True, timeout: float = LAUNCH_TIMEOUT_S, prefix: list[str] | None = None,
                 env: dict[str, str] | None = None, program: tuple[str, ...] = ("-m", "hvdtrain")
                 ) -> subprocess.CompletedProcess:
    """Runs `python -m hvdtrain ARGS` (or `python PROGRAM ARGS`) under a launcher (or the command words
    `prefix`), with `env` added to the environment; returns the finished process (text output)."""
    words = launcher_prefix(launcher, np_) if prefix is None else prefix
    cmd = [*words, sys.executable, *program, *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def train_many(runs: list[list[str]], job_file: Path, *, launcher: str = "single", np_: int = 1,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Trains every run (its config overrides) one after another in one start of each rank
    (tests/scripts/train_many.py): for runs that differ only in config, the framework and Horovod start once."""
    job_file.write_text(json.dumps(runs))
    return run_hvdtrain([str(job_file)], launcher=launcher, np_=np_, env=env,
                        program=(str(REPO / "tests" / "scripts" / "train_many.py"),))


def together(*jobs: Callable[[], Any]) -> list[Any]:
    """Runs the jobs (each starts processes and waits) at the same time; their results in order. For independent
    one-process runs: most of a run's start is one core importing its framework, and the machine has two."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def numbers(record: dict) -> dict:
    """A metrics.jsonl record without its timings: what two runs of the same training must share exactly."""
    return {k: v for k, v in record.items() if not k.endswith(("time_s", "per_s", "fraction"))}


def read_weights(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "weights.npz") as data:
        return {k: data[k] for k in data.files}


def max_weight_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


# A fast, dropout-free digits config for equivalence tests.
SMALL_CONFIG = ("data: {name: digits, val_fraction: 0.2}\n"
                "model: {name: cnn, channels: [8], hidden_units: [32]}\n"
                "train: {epochs: 1, max_steps_per_epoch: 5}\n"
                "optim: {name: sgd, lr: 0.1, momentum: 0.9}\n"
                "run: {progress: 'off'}\n")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One MLflow tracking server for the session's tracking tests (tests/mlflow_server.py), stopped at the end."""
    pytest.importorskip("mlflow", reason="mlflow (requirements.txt) is not installed")
    from mlflow_server import Server, free_port

    server = Server(tmp_path_factory.mktemp("mlflow"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    """SMALL_CONFIG as a file."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_CONFIG)
    return path


# Every run ends with the processes the tests started (tests/launch_count.py); `make test` adds pytest's 15
# slowest tests, so that drift in the suite's time shows in every CI log.
_LAUNCHES = LaunchCounter()


def pytest_configure(config: pytest.Config) -> None:
    _LAUNCHES.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    _LAUNCHES.uninstall()


def pytest_collection_finish(session: pytest.Session) -> None:
    import run_pool  # imports this module: not at its top

    run_pool.select({str(item.path) for item in session.items})


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _LAUNCHES.current = nodeid


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.section("launches")
    for line in _LAUNCHES.summary_lines():
        terminalreporter.write_line(line)
    if os.environ.get("HVDTRAIN_LAUNCH_LOG"):
        _LAUNCHES.write(Path(os.environ["HVDTRAIN_LAUNCH_LOG"]))
