"""Bad input through the real CLI: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_hvdtrain


def assert_refused(proc, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("hvdtrain: error:")]
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["optim.lrr=0.1"], "did you mean 'optim.lr'"),
    (["train.batch_size=-3"], "train.batch_size: -3 is below the minimum 1"),
    (["backend=mxnet"], "backend: 'mxnet' is not one of torch, tensorflow"),
    (["--config", "does/not/exist.yaml"], "config file 'does/not/exist.yaml' not found"),
    (["policy.reduce_op=adasum", "policy.precision=fp16"], "cannot be combined with policy.precision=fp16"),
])
def test_config_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    run_dir = tmp_path / "run"
    proc = run_hvdtrain([*args, f"run.dir={run_dir}"], check=False)
    assert_refused(proc, fragment)
    assert not run_dir.exists()


def test_data_errors_leave_nothing_written(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_hvdtrain(["data.name=npz", f"data.path={tmp_path / 'missing.npz'}", f"run.dir={run_dir}"],
                        check=False)
    assert_refused(proc, "missing.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    proc = run_hvdtrain(["data.name=npz", f"data.path={corrupt}", f"run.dir={run_dir}"], check=False)
    assert_refused(proc, "corrupt.npz")
    assert not run_dir.exists()


def test_help_and_default_command() -> None:
    proc = run_hvdtrain(["--help"])
    assert "doctor" in proc.stdout and "train" in proc.stdout
    proc = run_hvdtrain(["train", "--help"])
    assert "key=value" in proc.stdout
