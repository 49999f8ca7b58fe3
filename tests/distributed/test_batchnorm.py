"""BatchNorm across ranks (np=2, real launchers, both backends): the validation numbers a run reports are its
saved model's, and with model.sync_batchnorm np=2 at batch B trains like np=1 at batch 2B, for built-in and
user models, in fp32 and bf16.

Every run of this module is pooled with other modules' runs (tests/run_pool.py: one np=2 job and one np=1 process
per backend for the session, since the runs differ only in config); the tests read their run directories and start
the `evaluate` processes they check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import run_pool
from conftest import max_weight_diff, read_metrics, read_weights, run_hvdtrain, together
from run_pool import PoolRun

pytestmark = pytest.mark.distributed

RESNET = ["model.name=resnet", "model.depth=8", "run.progress=off"]
# Plain SGD at a small LR: with momentum 0.9 and LR 0.05 TensorFlow's float rounding differences between
# batch 16 and batch 32 convolutions grow chaotically over an epoch (1e-4 after 12 steps), hiding what is tested.
PARITY = [*RESNET, "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.0", "policy.lr_scaling=none",
          "train.epochs=1", "train.max_steps_per_epoch=12", "checkpoint.keep_last=0"]
PARITY_TOL = {"fp32": 1e-5, "bf16": 1e-2}  # bf16: 8 bits of mantissa in the convolutions (measured 1.7e-3)


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

VALIDATION = [("torch", "average"), ("tensorflow", "average"), ("tensorflow", "rank0")]
PRECISIONS = ("fp32", "bf16")
USER_MODEL = {"torch": "bn_models:torch_model", "tensorflow": "bn_models:keras_model"}


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """Every run of the module (tests/run_pool.py); their directories are root/<backend>/<name>."""
    (root / "bn_models.py").write_text(USER_MODELS)  # the user models' module, for the runs that name it
    runs = []
    for backend in ("torch", "tensorflow"):
        out = root / backend
        runs += [PoolRun(backend, 2, (*RESNET, f"backend={backend}", f"model.batchnorm_stats={mode}",
                                      "train.epochs=1", f"run.dir={out / f'validation-{mode}'}"))
                 for b, mode in VALIDATION if b == backend]
        for name, extra in [*((p, [f"policy.precision={p}"]) for p in PRECISIONS),
                            ("user", [f"model.name={USER_MODEL[backend]}", "checkpoint.keep_last=1"])]:
            common = [*PARITY, *extra, f"backend={backend}"]
            runs.append(PoolRun(backend, 2, (*common, "model.sync_batchnorm=true", "train.batch_size=16",
                                             f"run.dir={out / name / 'np2'}")))
            runs.append(PoolRun(backend, 1, (*common, "train.batch_size=32", f"run.dir={out / name / 'np1'}")))
    return runs  # np1: plain BatchNorm, one rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_pool.trained(__file__, tmp_path_factory)


@pytest.mark.parametrize("backend, mode", VALIDATION)
def test_reported_validation_is_the_saved_models(backend: str, mode: str, runs: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs / backend / f"validation-{mode}", run_dir)
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


def _parity(backend: str, precision: str, pair: Path) -> None:
    """np=2 at batch 16 with model.sync_batchnorm against np=1 at batch 32 (the runs in `pair`)."""
    a, b = read_weights(pair / "np2"), read_weights(pair / "np1")
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
@pytest.mark.parametrize("precision", PRECISIONS)
def test_sync_batchnorm_np2_equals_np1_with_double_batch(backend: str, precision: str, runs: Path) -> None:
    _parity(backend, precision, runs / backend / precision)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_user_models_get_both(backend: str, runs: Path, tmp_path: Path) -> None:
    _parity(backend, "fp32", runs / backend / "user")
    run_dir = tmp_path / "np2"  # the np=2 run: its reported numbers are its saved model's
    shutil.copytree(runs / backend / "user" / "np2", run_dir)
    run_hvdtrain(["evaluate", str(run_dir)], env={"PYTHONPATH": str(runs)})
    final, saved = read_metrics(run_dir)[-1], json.loads((run_dir / "eval.json").read_text())
    assert saved["val_accuracy"] == final["val_accuracy"]
    assert saved["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
