"""hvdtrain.train's inputs (hvdtrain/api.py): a config as object, mapping or YAML path, overrides as texts or a
mapping, and Python objects where the config names import paths (in-process; the launched run:
tests/distributed/test_python_entry.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hvdtrain
from hvdtrain.api import resolve
from hvdtrain.config import load_config
from hvdtrain.errors import ConfigError
from hvdtrain.imports import import_by_path


def test_a_config_in_any_form_gives_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train: {epochs: 3}\noptim: {lr: 0.2}\n")
    from_yaml = resolve(tmp_path / "c.yaml", ["train.batch_size=8"])
    assert resolve({"train": {"epochs": 3}, "optim": {"lr": 0.2}}, {"train.batch_size": 8}) == from_yaml
    assert from_yaml == load_config(tmp_path / "c.yaml", ["train.batch_size=8"])
    # A Config holds resolved values (eval_batch_size from batch_size), like a finished run's config.yaml.
    assert resolve(from_yaml) == from_yaml


def test_objects_take_the_place_of_import_paths() -> None:
    def within_one(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (np.abs(outputs - targets) <= 1).all(axis=1).astype(float)

    class Printer:
        def on_epoch_end(self, ctx: object, record: dict) -> bool:
            return False

    printer = Printer()
    cfg = resolve({"task": "regression"}, metrics=["mae", within_one], callbacks=[printer],
                  loss=np.mean)  # any module-level function of an importable module stands in for a loss here
    assert cfg.train.metrics == ("mae", "python:within_one") and cfg.metric_names() == ("mae", "within_one")
    assert cfg.train.loss == "numpy:mean"  # importable from its module: named by its own path
    assert import_by_path(cfg.train.metrics[1], "m", ConfigError) is within_one
    factory = import_by_path(cfg.callbacks.user[0], "c", ConfigError)
    assert callable(factory) and factory(cfg) is printer
    assert hvdtrain.train is __import__("hvdtrain.api").api.train


def test_a_bad_value_is_the_configs_one_line_error() -> None:
    with pytest.raises(ConfigError, match="optim.lr") as info:
        resolve(None, {"optim.lr": -1.0})
    assert "\n" not in str(info.value)
