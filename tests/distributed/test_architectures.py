"""Built-in architectures and user models by import path on both backends, with real training runs.

Every np=2 run is pooled with other modules' runs (tests/run_pool.py: they differ only in config, so each rank
starts its framework and Horovod once); the tests read their run directories."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import run_pool
from conftest import REPO, read_metrics, read_summary, run_hvdtrain, together
from run_pool import PoolRun

pytestmark = pytest.mark.distributed

BACKENDS = ["torch", "tensorflow"]


USER_MODELS = '''
def build_torch(cfg, input_shape, num_classes):
    from torch import nn
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, 40), nn.Tanh(), nn.Linear(40, num_classes))


def build_keras(cfg, input_shape, num_classes):  # no keras.Input: hvdtrain builds it before training
    import keras
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(40, activation="tanh"),
                             keras.layers.Dense(num_classes)])
'''

COMPACT = {"mobilenet": ["model.name=mobilenet"], "resnet": ["model.name=resnet", "model.depth=8"]}
BUILDER = {"torch": "build_torch", "tensorflow": "build_keras"}
CIFAR = ["data.name=cifar10", "model.name=mobilenet", "model.width_multiplier=0.5", "train.epochs=5",
         "train.batch_size=16", "optim.lr=0.025"]


def write_coloured_cifar(directory: Path, batches: int, per_batch: int) -> None:
    """CIFAR-10 python batches (Python 2 pickles, as the real files) that a working model can learn in a few
    steps: each class has its own colour, each pixel that colour plus uniform noise of +-30 levels."""
    sys.path.insert(0, str(REPO / "tests" / "unit" / "data"))
    from test_standard_datasets import py2_pickle

    directory.mkdir(parents=True)
    rng = np.random.default_rng(3)
    palette = np.array([[(c * 71) % 256, (c * 151 + 40) % 256, (c * 199 + 90) % 256] for c in range(10)])
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        images = palette[labels][:, None, None, :] + rng.integers(-30, 31, (per_batch, 32, 32, 3))
        rows = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        (directory / name).write_bytes(py2_pickle({"batch_label": name, "labels": labels.tolist(), "data": rows,
                                                   "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}))


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """Every np=2 run of the module (tests/run_pool.py): root/<backend>/<name> (and root/my_models.py,
    root/cifar)."""
    (root / "my_models.py").write_text(USER_MODELS)
    write_coloured_cifar(root / "cifar", batches=4, per_batch=64)
    runs = []
    for backend in BACKENDS:
        digits = ["--config", "configs/digits.yaml", f"backend={backend}", "train.epochs=3", "run.progress=off"]
        jobs = [[*digits, *model, f"run.dir={root / backend / name}"] for name, model in COMPACT.items()]
        jobs.append([*digits, f"model.name=my_models:{BUILDER[backend]}", f"run.dir={root / backend / 'user'}"])
        if backend == "torch":  # the default backend
            jobs.append([*CIFAR, "backend=torch", f"data.path={root / 'cifar'}", "run.progress=off",
                         f"run.dir={root / 'cifar-run'}"])
        runs += [PoolRun(backend, 2, tuple(job)) for job in jobs]
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_pool.trained(__file__, tmp_path_factory)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", COMPACT)
def test_compact_architectures_train_on_digits(runs: Path, backend: str, model: str) -> None:
    summary = read_summary(runs / backend / model)
    print(f"{backend} {model}: {summary['num_parameters']} parameters, "
          f"val accuracy {summary['final']['val_accuracy']:.3f}")
    # Measured after 3 epochs on one process: 0.92-0.97; at np=2 (global batch 64) a little lower.
    assert summary["final"]["val_accuracy"] >= 0.80


def test_a_user_model_by_import_path_trains(runs: Path, tmp_path: Path) -> None:
    """Both backends; each refuses the other framework's model in one line (the two refusals at once)."""
    switch = {"torch": "tensorflow", "tensorflow": "torch"}
    refusals = together(*(lambda b=b: run_hvdtrain(["--config", "configs/digits.yaml", f"backend={b}",
                                                    f"model.name=my_models:{BUILDER[switch[b]]}",
                                                    f"run.dir={tmp_path / b}"], env={"PYTHONPATH": str(runs)},
                                                   check=False) for b in BACKENDS))
    for backend, wrong in zip(BACKENDS, refusals, strict=True):
        summary = read_summary(runs / backend / "user")
        assert summary["num_parameters"] == 64 * 40 + 40 + 40 * 10 + 10
        assert summary["final"]["val_accuracy"] >= 0.6  # chance is 0.1
        assert wrong.returncode == 2 and f"or set backend={switch[backend]}" in wrong.stderr, (backend, wrong.stderr)
        assert "Traceback" not in wrong.stderr


def test_cifar10_files_train_a_mobilenet(runs: Path) -> None:
    # Fails if the files are misread (labels detached from images), or the MobileNet does not learn: classes
    # told apart by colour reach a validation accuracy of 0.98 on the test batch after 40 steps (chance: 0.1).
    summary = read_summary(runs / "cifar-run")
    metrics = read_metrics(runs / "cifar-run")
    print(f"mobilenet on coloured CIFAR-10 files: {[(m['train_loss'], m['val_accuracy']) for m in metrics]}")
    assert summary["steps"] == 40  # 256 images / (2 ranks x 16) = 8 steps, 5 epochs
    assert summary["final"]["val_accuracy"] >= 0.6
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 2
