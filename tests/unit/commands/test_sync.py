"""`hvdtrain sync` refuses, in one line, what it cannot send (sending: tests/distributed/test_tracking.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvdtrain.commands.sync import sync_run
from hvdtrain.config import load_config, to_yaml
from hvdtrain.errors import UserError


def test_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no config.yaml: pass a run directory"):
        sync_run(tmp_path)


def test_a_run_trained_without_tracking_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(to_yaml(load_config(None)))
    with pytest.raises(UserError, match="without tracking.mlflow_uri and has no tracking.json"):
        sync_run(tmp_path)


def test_an_unreachable_server_is_one_line_and_nothing_is_marked_sent(tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="mlflow (requirements.txt) is not installed")
    cfg = load_config(None, ["tracking.mlflow_uri=http://127.0.0.1:9", "tracking.timeout_s=1"])  # discard port
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    with pytest.raises(UserError, match=r"sync: MLflow at http://127.0.0.1:9 failed \(.*\): check the server"):
        sync_run(tmp_path)
    assert not (tmp_path / "tracking.json").exists()  # no run was created there
