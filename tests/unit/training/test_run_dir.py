"""run.dir's checks before a run trains into it (hvdtrain/training/run_dir.py), in-process on the numpy backend:
what every rank refuses before it starts its framework, and what an elastic worker must not refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_backend import FakeBackend

from hvdtrain.config import Config, load_config
from hvdtrain.errors import CheckpointError, UserError
from hvdtrain.training.checkpoint import MANIFEST
from hvdtrain.training.loop import train
from hvdtrain.training.run_dir import check_run_dir, resume_point

BASE = ["run.progress=off", "run.tensorboard=false", "data.name=synthetic", "data.synthetic_samples=40",
        "data.synthetic_shape=[4,4,1]", "data.num_classes=3", "train.batch_size=4", "train.epochs=2"]


def cfg_of(run_dir: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.dir={run_dir}", *BASE, *overrides])


def test_used_run_dirs_and_checkpoints_that_do_not_fit_are_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    check_run_dir(cfg_of(run))  # a new run.dir
    assert resume_point(cfg_of(run, "train.resume=auto")) is None  # auto over nothing starts afresh
    train(cfg_of(run), FakeBackend())

    with pytest.raises(UserError, match="already holds a run: set train.resume=auto"):
        check_run_dir(cfg_of(run))
    check_run_dir(cfg_of(run, "run.overwrite=true"))
    found = resume_point(cfg_of(run, "train.resume=auto"))
    assert found is not None and found.path.name == "epoch-0002" and found.state.epoch == 2
    with pytest.raises(CheckpointError, match=r"different setup \(data.num_classes=3 there, 4 here\)"):
        check_run_dir(cfg_of(run, "train.resume=auto", "data.num_classes=4"))

    monkeypatch.setenv("HOROVOD_ELASTIC", "1")  # a respawned elastic worker joins the run under way
    check_run_dir(cfg_of(run))
    monkeypatch.delenv("HOROVOD_ELASTIC")

    (found.path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        check_run_dir(cfg_of(run, "train.resume=auto"))
    for path in (run / "checkpoints").iterdir():
        (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="holds a run but no complete checkpoint"):
        check_run_dir(cfg_of(run, "train.resume=auto"))
