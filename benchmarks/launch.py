"""Launching benchmark processes (horovodrun with Gloo or MPI, torchrun; a failure names the command and
the end of its output) and the options every section takes."""

from __future__ import annotations

import argparse
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


def section_parser(doc: str, repeats: int = 3) -> argparse.ArgumentParser:
    """The options every section of the suite takes: --repeats and --quick (tiny sizes, checks the runner)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the runner works")
    return parser


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts `cmd` in the background (see `finish`)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 1800) -> str:
    """Waits for a `start`ed command; returns its output, raises with the tail of it on failure."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args)} exited {proc.returncode}:\n{_tail(out)}")
    return out


def _tail(output: str) -> str:
    lines = output.strip().splitlines()
    errors = [line for line in lines if "Error" in line or "error:" in line][:5]  # the worker's, first
    return "\n".join([*errors, "...", *lines[-10:]])


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Runs `cmd` to completion; returns its stdout, raises with the tail of its output on failure."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}")
    return proc.stdout
