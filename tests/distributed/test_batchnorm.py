"""BatchNorm across ranks (np=2, real launchers, both backends): the validation numbers a run reports are its
saved model's, and with model.sync_batchnorm np=2 at batch B trains like np=1 at batch 2B, for built-in and
user models, in fp32 and bf16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import max_weight_diff, read_metrics, read_weights, run_hvdtrain, together

pytestmark = pytest.mark.distributed

RESNET = ["model.name=resnet", "model.depth=8", "run.progress=off"]
# Plain SGD at a small LR: with momentum 0.9 and LR 0.05 TensorFlow's float rounding differences between
# batch 16 and batch 32 convolutions grow chaotically over an epoch (1e-4 after 12 steps), hiding what is tested.
PARITY = [*RESNET, "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.0", "policy.lr_scaling=none",
          "train.epochs=1", "train.max_steps_per_epoch=12", "checkpoint.keep_last=0"]
PARITY_TOL = {"fp32": 1e-5, "bf16": 1e-2}  # bf16: 8 bits of mantissa in the convolutions (measured 1.7e-3)


@pytest.mark.parametrize("backend, mode", [("torch", "average"), ("tensorflow", "average"),
                                           ("tensorflow", "rank0")])
def test_reported_validation_is_the_saved_models(backend: str, mode: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_hvdtrain([*RESNET, f"backend={backend}", f"model.batchnorm_stats={mode}", "train.epochs=1",
                  f"run.dir={run_dir}"], launcher="mpirun", np_=2)
    final = read_metrics(run_dir)[-1]
    # One process each, at once: the saved model, and the last checkpoint (which must hold the same statistics).
    # Both would write eval.json into the run: each evaluates its own copy.
    shutil.copytree(run_dir, tmp_path / "copy")
    together(lambda: run_hvdtrain(["evaluate", str(run_dir)]),
             lambda: run_hvdtrain(["evaluate", str(tmp_path / "copy"), "--checkpoint",
                                   str(tmp_path / "copy" / "checkpoints" / "epoch-0001")]))
    saved = json.loads((run_dir / "eval.json").read_text())
    print(f"{backend}/{mode}: reported {final['val_loss']:.6f}/{final['val_accuracy']:.6f}, saved model "
          f"{saved['val_loss']:.6f}/{saved['val_accuracy']:.6f}")
    assert saved["val_accuracy"] == final["val_accuracy"]
    assert saved["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    checkpoint = json.loads((tmp_path / "copy" / "eval.json").read_text())
    assert checkpoint["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)


def _parity(backend: str, precision: str, extra: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> None:
    common = [*PARITY, *extra, f"backend={backend}", f"policy.precision={precision}"]
    two, one = tmp_path / "np2", tmp_path / "np1"
    together(lambda: run_hvdtrain([*common, "model.sync_batchnorm=true", "train.batch_size=16", f"run.dir={two}"],
                                  launcher="mpirun", np_=2, env=env),
             lambda: run_hvdtrain([*common, "train.batch_size=32", f"run.dir={one}"], env=env))  # plain BN, 1 rank
    a, b = read_weights(two), read_weights(one)
    stats = [k for k in a if "running" in k or "moving" in k]
    assert len(stats) >= 4, f"no BatchNorm statistics among {sorted(a)[:6]}"
    diff = max_weight_diff(a, b)
    stats_diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in stats)
    moved = max(float(np.max(np.abs(a[k] - (1.0 if "var" in k else 0.0)))) for k in stats)
    print(f"{backend} {precision}: max |w(np=2, B=16, sync) - w(np=1, B=32)| = {diff:.3g} (statistics {stats_diff:.3g},"
          f" which moved {moved:.3g} from their start)")
    assert moved > 10 * PARITY_TOL[precision]  # the statistics really were updated
    assert diff <= PARITY_TOL[precision]


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sync_batchnorm_np2_equals_np1_with_double_batch(backend: str, precision: str, tmp_path: Path) -> None:
    _parity(backend, precision, [], tmp_path)


USER_MODELS = '''
def torch_model(cfg, input_shape, num_classes):
    from torch import nn
    h, w, c = input_shape
    return nn.Sequential(nn.Conv2d(c, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * h * w, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))


def keras_model(cfg, input_shape, num_classes):
    import keras
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Dense(16)(keras.layers.Flatten()(x))
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
'''


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_user_models_get_both(backend: str, tmp_path: Path) -> None:
    (tmp_path / "bn_models.py").write_text(USER_MODELS)
    name = "bn_models:torch_model" if backend == "torch" else "bn_models:keras_model"
    env = {"PYTHONPATH": str(tmp_path)}
    _parity(backend, "fp32", [f"model.name={name}", "checkpoint.keep_last=1"], tmp_path, env)
    run_dir = tmp_path / "np2"  # the np=2 run just trained: its reported numbers are its saved model's
    run_hvdtrain(["evaluate", str(run_dir)], env=env)
    final, saved = read_metrics(run_dir)[-1], json.loads((run_dir / "eval.json").read_text())
    assert saved["val_accuracy"] == final["val_accuracy"]
    assert saved["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
