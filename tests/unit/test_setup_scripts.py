"""The setup scripts' failure path: a broken Horovod build keeps its whole log where the message says and
names its first error (scripts/build_horovod.sh, scripts/common.sh's first_build_error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def first_build_error(log: Path) -> str:
    return subprocess.run(["bash", "-c", f'source "{REPO}/scripts/common.sh"; first_build_error "$1"', "_", str(log)],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(("log", "expected"), [
    # pip prints its own error before the output of the build it ran: the cause must win.
    ("  error: subprocess-exited-with-error\n      -- Found MPI\n      CMake Error at torch/CMakeLists.txt:13 "
     "(find_package):\n        Could NOT find CUDAToolkit (missing: CUDA_CUDART)\n        (found version \"13.0\")\n"
     "      Call Stack (most recent call first):\n",
     'CMake Error at torch/CMakeLists.txt:13 (find_package): Could NOT find CUDAToolkit (missing: CUDA_CUDART) '
     '(found version "13.0")'),
    ("  error: subprocess-exited-with-error\n      /src/horovod/common/x.cc:3:10: fatal error: nccl.h: No such file "
     "or directory\n      error: later\n",
     "/src/horovod/common/x.cc:3:10: fatal error: nccl.h: No such file or directory"),
    ("patching file CMakeLists.txt\nHunk #1 FAILED at 16.\n1 out of 1 hunk FAILED\n", "Hunk #1 FAILED at 16."),
    ("  error: subprocess-exited-with-error\n  nothing else\n", "error: subprocess-exited-with-error"),
    ("all fine\n", ""),
])
def test_first_build_error_names_the_cause(tmp_path: Path, log: str, expected: str) -> None:
    path = tmp_path / "build.log"
    path.write_text(log)
    assert first_build_error(path) == expected


def _run_build(tmp_path: Path, patch_text: str) -> subprocess.CompletedProcess:
    patch = tmp_path / "bad.patch"
    patch.write_text(patch_text)
    env = {**os.environ, "HVDTRAIN_CACHE": str(tmp_path / "cache"), "HVDTRAIN_HOROVOD_PATCH": str(patch),
           "VENV": str(VENV)}
    return subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh")], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


# A hunk that makes CMake's configure step fail at once (the rest of the build is not what is tested).
CONFIGURE_ERROR = ("--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1,3 +1,4 @@\n"
                   " cmake_minimum_required(VERSION 3.13 FATAL_ERROR)\n"
                   "+message(FATAL_ERROR \"hvdtrain test: a deliberately broken build\")\n"
                   " if(POLICY CMP0074)\n"
                   "     # 1. Introduced with 3.12.4.\n")


def test_broken_build_keeps_its_log_and_names_the_first_error(tmp_path: Path) -> None:
    proc = _run_build(tmp_path, CONFIGURE_ERROR)
    assert proc.returncode != 0
    log = tmp_path / "cache" / "last-horovod-build.log"
    assert log.is_file(), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, not pip's tail
    assert "CMake Error at CMakeLists.txt:2 (message): hvdtrain test: a deliberately broken build" in lines[0]
    assert "a deliberately broken build" in lines[0]
    assert f"full log: {log}" in lines[0]
    assert "a deliberately broken build" in log.read_text()
    assert not list((tmp_path / "cache").glob("horovod-*")), "a failed build must leave no cached wheel"


def test_patch_that_does_not_apply_is_named(tmp_path: Path) -> None:
    hunk = ("--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1,1 +1,1 @@\n-this line is not in the file\n"
            "+nor is this one\n")
    proc = _run_build(tmp_path, hunk)
    assert proc.returncode != 0
    log = tmp_path / "cache" / "last-horovod-build.log"
    assert "could not apply" in proc.stderr and "Hunk #1 FAILED" in proc.stderr, proc.stderr
    assert f"full log: {log}" in proc.stderr and log.is_file()
