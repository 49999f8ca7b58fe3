"""`hvdtrain doctor` as a real process: healthy environment, and a missing MPI with its fix."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hvdtrain", "doctor"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_doctor_reports_versions_and_controllers() -> None:
    proc = doctor(dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all good" in out
    assert "torch 2.13.0" in out and "tensorflow 2.21.0" in out
    assert out.count("horovod 0.28.1 built with gloo, mpi") == 2
    assert "Open MPI" in out


def test_doctor_names_the_fix_when_mpi_is_missing() -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # the venv only: no mpirun
    proc = doctor(env)
    assert proc.returncode == 1
    assert "BAD mpi" in proc.stdout
    assert "fix mpi: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)" in proc.stdout
