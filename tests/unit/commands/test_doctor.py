"""`hvdtrain doctor`: as a real process (a healthy environment as JSON; a missing MPI and a GPU the stack cannot
use, with their fixes), and its verdicts on synthetic probe answers (no framework imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, together

from hvdtrain.commands.doctor import GPU_FIX, Gpus, assess, cudnn_version, machine_gpus, nccl_version

VENV = Path(sys.executable).parent.parent
# The stack the setup installed here (scripts/setup_env.sh writes the marker for the CUDA one).
CUDA_VENV = (VENV / ".hvdtrain-device").is_file() and (VENV / ".hvdtrain-device").read_text().strip() == "cuda"


def doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hvdtrain", "doctor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def fake_smi(tmp_path: Path, listing: str | None) -> Path:
    """A folder with an nvidia-smi that prints `listing` for -L, or fails (no driver) when None."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    body = f"printf '{listing}'" if listing is not None else "echo 'NVIDIA-SMI has failed'; exit 9"
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    return bin_dir


def no_gpu_env(tmp_path: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HVDTRAIN_DEVICE"}
    return {**env, "PATH": f"{fake_smi(tmp_path, None)}:{path}",
            "HVDTRAIN_NVIDIA_GPUS_DIR": str(tmp_path / "no-such-dir")}


@pytest.fixture(scope="module")
def doctors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Both real `doctor` runs at once (each spends most of its time in one core importing TensorFlow): `json` on
    this machine as it is, without a GPU; `broken` with the venv alone on PATH (no mpirun) and an nvidia-smi
    that lists a GPU which nothing here can use."""
    healthy, broken = tmp_path_factory.mktemp("doctor-json"), tmp_path_factory.mktemp("doctor-broken")
    smi_dir = fake_smi(broken, "GPU 0: NVIDIA H200 (UUID: GPU-0)\\n")
    broken_env = {**os.environ, "PATH": f"{smi_dir}:{os.path.dirname(sys.executable)}"}
    broken_env.pop("HVDTRAIN_DEVICE", None)
    json_run, broken_run = together(partial(doctor, no_gpu_env(healthy, os.environ["PATH"]), "--json"),
                                    partial(doctor, broken_env))
    return {"json": json_run, "broken": broken_run}


def test_doctor_json_reports_versions_controllers_and_gpus(doctors: dict[str, subprocess.CompletedProcess[str]]
                                                           ) -> None:
    proc = doctors["json"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["gpus"] == 0
    assert "Open MPI" in report["mpirun"]["detail"]
    torch, tf = report["torch"], report["tensorflow"]
    assert torch["version"].startswith("2.13.0") and tf["version"] == "2.21.0"
    for fw in (torch, tf):
        assert fw["horovod"] == "0.28.1" and fw["mpi"] is True and fw["gloo"] is True and fw["ok"] is True
        # NCCL exactly when the setup installed the CUDA stack, with the version Horovod was compiled with.
        assert fw["nccl"] is CUDA_VENV and fw["cuda"] is CUDA_VENV, fw
        assert (fw["nccl_version"] is not None) is CUDA_VENV
        assert fw["gpus"] == 0
    if CUDA_VENV:
        assert torch["cuda_version"].startswith("13.") and tf["cuda_version"] is not None


def test_doctor_names_the_fixes_for_a_missing_mpi_and_an_unusable_gpu(
        doctors: dict[str, subprocess.CompletedProcess[str]]) -> None:
    proc = doctors["broken"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "BAD mpi" in out
    assert "fix mpi: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)" in out
    assert "ok  gpus        1 NVIDIA GPU(s) (nvidia-smi -L): NVIDIA H200" in out
    fixes = [line for line in out.splitlines() if line.startswith(("fix torch:", "fix tensorflow:"))]
    assert len(fixes) == 2, out
    for line in fixes:  # the CPU stack must be replaced; the CUDA one sees no GPU on this GPU-less machine
        assert ("HVDTRAIN_DEVICE=cuda make setup" in line) is not CUDA_VENV, line
    assert "all good" not in out


# --- Verdicts on synthetic probe answers ---------------------------------------------------------------------

CPU_STACK: dict[str, Any] = {"version": "2.13.0+cpu", "horovod": "0.28.1", "mpi": True, "gloo": True, "nccl": False,
                             "nccl_version": None, "cuda": False, "cuda_version": None, "cudnn_version": None,
                             "nccl_runtime_version": None, "gpus": 0}
CUDA_STACK: dict[str, Any] = {**CPU_STACK, "version": "2.13.0+cu130", "nccl": True, "nccl_version": "2.29.7",
                              "cuda": True, "cuda_version": "13.0", "cudnn_version": "9.20.0",
                              "nccl_runtime_version": "2.29.7", "gpus": 8}
NO_GPU = Gpus(0, [], "")
EIGHT = Gpus(8, ["NVIDIA H200"] * 8, "nvidia-smi -L")


def test_cpu_stack_on_a_cpu_machine_is_fine() -> None:
    check = assess("torch", CPU_STACK, NO_GPU, "auto")
    assert check.ok and "(CPU build); horovod 0.28.1 built with gloo, mpi; GPUs visible: 0" in check.detail


@pytest.mark.parametrize(("info", "why"), [
    (CPU_STACK, "torch is a CPU build"),
    ({**CPU_STACK, "version": "2.13.0+cu130", "cuda_version": "13.0"}, "Horovod was built without NCCL/CUDA"),
    ({**CUDA_STACK, "nccl": False, "nccl_version": None}, "Horovod was built without NCCL/CUDA"),
])
def test_gpu_machine_with_a_stack_that_cannot_use_it_is_a_problem(info: dict[str, Any], why: str) -> None:
    check = assess("torch", info, EIGHT, "auto")
    assert not check.ok and why in check.fix
    assert check.fix.endswith(GPU_FIX) and "\n" not in check.fix
    assert "HVDTRAIN_DEVICE=cuda make setup" in check.fix


def test_gpu_machine_with_the_cpu_stack_chosen_on_purpose_is_fine() -> None:
    assert assess("torch", CPU_STACK, EIGHT, "cpu").ok


def test_cuda_stack_on_a_gpu_machine() -> None:
    check = assess("torch", CUDA_STACK, EIGHT, "auto")
    assert check.ok, check.fix
    assert check.detail == ("torch 2.13.0+cu130 (CUDA 13.0, cuDNN 9.20.0, NCCL 2.29.7 loaded); horovod 0.28.1 built "
                            "with gloo, mpi, nccl 2.29.7, cuda; GPUs visible: 8")


def test_cuda_stack_that_sees_no_gpu_points_at_the_driver() -> None:
    check = assess("tensorflow", {**CUDA_STACK, "gpus": 0}, EIGHT, "auto")
    assert not check.ok and "CUDA_VISIBLE_DEVICES" in check.fix and "CUDA 13.0" in check.fix


def test_missing_controller_comes_first() -> None:
    check = assess("torch", {**CUDA_STACK, "mpi": False}, EIGHT, "auto")
    assert not check.ok and check.fix.startswith("horovod lacks mpi")


def test_version_codes() -> None:
    assert nccl_version(22907) == "2.29.7" and nccl_version(23203) == "2.32.3" and nccl_version(2708) == "2.7.8"
    assert nccl_version(0) is None
    assert cudnn_version(92000) == "9.20.0" and cudnn_version(8907) == "8.9.7" and cudnn_version(None) is None


def test_machine_gpus_from_nvidia_smi_or_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake_smi(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-a)\\nGPU 1: NVIDIA H200 "
                                                      "(UUID: GPU-b)\\n")))
    assert machine_gpus() == Gpus(2, ["NVIDIA H200", "NVIDIA H200"], "nvidia-smi -L")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "gpus" / "0000:3b:00.0").mkdir(parents=True)
    monkeypatch.setenv("HVDTRAIN_NVIDIA_GPUS_DIR", str(tmp_path / "gpus"))
    assert machine_gpus().count == 1
    monkeypatch.setenv("HVDTRAIN_NVIDIA_GPUS_DIR", str(tmp_path / "none"))
    assert machine_gpus() == NO_GPU
