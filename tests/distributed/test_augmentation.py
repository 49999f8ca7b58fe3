"""Augmentation inside the distributed input pipeline, on both backends under horovodrun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_summary, run_hvdtrain
from dataset_arrays import arrays

from hvdtrain.config import load_config
from hvdtrain.data import load_dataset

pytestmark = pytest.mark.distributed

ACCURACY_FLOOR = 0.95  # digits with rotation/shift/shear/zoom after 15 epochs on 2 ranks


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_augmented_digits_train_on_two_ranks(tmp_path: Path, backend: str) -> None:
    run_dir = tmp_path / backend
    run_hvdtrain(["--config", "configs/digits_augment.yaml", f"backend={backend}", "run.progress=off",
                  f"run.dir={run_dir}"], launcher="gloo", np_=2)
    summary = read_summary(run_dir)
    print(f"{backend}: augmented digits val_accuracy {summary['final']['val_accuracy']:.4f}")
    assert summary["final"]["val_accuracy"] >= ACCURACY_FLOOR
    assert summary["horovod_settings"] == {}  # two ranks: Horovod's own cycle time (only one rank gets 20 ms)
    # Featurewise statistics cover the whole training set, not one rank's half of it.
    cfg = load_config("configs/digits_augment.yaml")
    x = arrays(load_dataset(cfg.data, cfg.seed)).x_train
    assert np.allclose(summary["featurewise_mean"], x.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(summary["featurewise_std"], x.std(axis=(0, 1, 2)), atol=1e-5)
    assert not np.allclose(summary["featurewise_mean"], x[0::2].mean(axis=(0, 1, 2)), atol=1e-5)
