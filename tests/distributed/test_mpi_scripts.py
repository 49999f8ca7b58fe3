"""mpi/: the mpirun wrapper runs real jobs; the batch scripts parse and print the commands they would run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO, read_summary

pytestmark = pytest.mark.distributed

SCRIPTS = ["mpi/hvdtrain-mpirun", "mpi/slurm.sbatch", "mpi/pbs.sh"]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    return subprocess.run(args, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str) -> None:
    proc = run(["bash", "-n", script])
    assert proc.returncode == 0, proc.stderr


def test_wrapper_dry_run_prints_the_mpirun_command() -> None:
    proc = run(["mpi/hvdtrain-mpirun", "-np", "2", "--dry-run", "--", "--config", "configs/digits.yaml",
                "train.epochs=1"])
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[:3] == ["mpirun", "-np", "2"]
    assert "-bind-to none -map-by slot" in proc.stdout
    assert words[-6].endswith("python")  # the repository's .venv/bin/python when it exists
    assert words[-5:] == ["-m", "hvdtrain", "--config", "configs/digits.yaml", "train.epochs=1"]
    if os.geteuid() == 0:
        assert "--allow-run-as-root" in words
    iface = run(["mpi/hvdtrain-mpirun", "-np", "2", "--dry-run"], HVDTRAIN_IFACE="lo").stdout
    assert "btl_tcp_if_include lo" in iface and "NCCL_SOCKET_IFNAME=lo" in iface and "HOROVOD_GLOO_IFACE=lo" in iface
    many = run(["mpi/hvdtrain-mpirun", "-np", str((os.cpu_count() or 1) + 1), "--dry-run"]).stdout
    assert "--oversubscribe" in many


@pytest.mark.parametrize("args,words", [
    ([], "pass -np N"),
    (["-np", "zero"], "pass -np N"),
    (["-np", "2", "--hostfile", "/no/such/file"], "hostfile '/no/such/file' not found"),
    (["-np"], "needs a number of ranks"),
])
def test_wrapper_usage_errors_are_one_line(args: list[str], words: str) -> None:
    proc = run(["mpi/hvdtrain-mpirun", *args])
    assert proc.returncode == 2 and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_slurm_dry_run_uses_srun_with_the_allocation() -> None:
    proc = run(["mpi/slurm.sbatch", "--config", "my.yaml"], HVDTRAIN_DRY_RUN="1", SLURM_NTASKS="8",
               SLURM_CPUS_PER_TASK="4", SLURM_SUBMIT_DIR=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("srun --mpi=pmix --ntasks=8 --cpus-per-task=4 --cpu-bind=cores")
    assert proc.stdout.rstrip().endswith("-m hvdtrain --config my.yaml train.threads_per_rank=4")
    own = run(["mpi/slurm.sbatch", "train.threads_per_rank=2"], HVDTRAIN_DRY_RUN="1", SLURM_CPUS_PER_TASK="4")
    assert own.stdout.count("threads_per_rank") == 1  # the user's setting wins
    wrapped = run(["mpi/slurm.sbatch", "x=1"], HVDTRAIN_DRY_RUN="1", HVDTRAIN_LAUNCHER="mpirun", SLURM_NTASKS="4")
    assert wrapped.stdout.startswith("mpi/hvdtrain-mpirun -np 4 -- x=1")


def test_pbs_dry_run_uses_the_node_file(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.write_text("node01\nnode01\nnode02\nnode02\n")
    proc = run(["mpi/pbs.sh", "--config", "my.yaml"], HVDTRAIN_DRY_RUN="1", PBS_NODEFILE=str(nodes),
               PBS_O_WORKDIR=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("mpirun -np 4 ") and f"--hostfile {nodes}" in proc.stdout
    assert proc.stdout.rstrip().endswith("-m hvdtrain --config my.yaml")
    missing = run(["mpi/pbs.sh"], HVDTRAIN_DRY_RUN="1", PBS_NODEFILE="", HVDTRAIN_NP="")
    assert missing.returncode == 2 and "no PBS_NODEFILE" in missing.stderr


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_wrapper_trains_with_two_ranks(tmp_path: Path, backend: str) -> None:
    run_dir = tmp_path / "run"
    proc = run(["mpi/hvdtrain-mpirun", "-np", "2", "--", "--config", "configs/digits.yaml", f"backend={backend}",
                "train.epochs=3", "run.progress=off", f"run.dir={run_dir}"],
               HVDTRAIN_PYTHON=str(BIN / "python"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["controller"] == "mpi"
    assert summary["steps_per_rank"] == [66, 66]  # 3 epochs x 22 steps of 2 x 32 samples
    # 3 digits epochs at np=2 reach about 0.75-0.87 (the first epoch is slow to start).
    assert summary["final"]["val_accuracy"] >= 0.6
