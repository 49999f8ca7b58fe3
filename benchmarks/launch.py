"""Launching benchmark processes: horovodrun (Gloo or MPI), torchrun, plain Python; a failure names the
command and the end of its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def horovodrun(np_: int, *, controller: str = "gloo") -> list[str]:
    """`horovodrun -np N` on this host with Gloo or MPI as the controller (and MPI's transport)."""
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", f"--{controller}"]
    if controller == "mpi":
        cmd += ["--mpi-args=--oversubscribe --bind-to none" + (" --allow-run-as-root" if os.geteuid() == 0 else "")]
    return cmd


def torchrun(np_: int) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={np_}"]


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Runs `cmd` to completion; returns its stdout, raises with the tail of its output on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error:" in line][:5]  # the worker's, first
        tail = "\n".join([*errors, "...", *lines[-10:]])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    return proc.stdout
