"""Regression (scikit-learn's diabetes) and multilabel (digits' features with four yes/no labels) trained by real
2-rank Horovod jobs on both backends: each beats the trivial predictor clearly, with metrics from named sums."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import read_metrics, read_summary, together, train_many

from hvdtrain.data.sources import digits_file

pytestmark = pytest.mark.distributed
BACKENDS = ("torch", "tensorflow")
MLP = ["model.name=mlp", "model.hidden_units=[32]", "model.dropout=0", "train.batch_size=16", "run.progress=off"]
REGRESSION = [*MLP, "task=regression", "data.name=diabetes", "optim.name=adam", "optim.lr=0.05", "train.epochs=30"]
MULTILABEL = [*MLP, "task=multilabel", "data.name=npz", "train.epochs=4"]


def multilabel_digits(path: Path) -> np.ndarray:
    """Digits as 64 features; labels: even, above 4, prime, drawn with a loop (0, 6, 8, 9). Returns the labels."""
    table = np.loadtxt(digits_file(), delimiter=",")
    digit = table[:, -1].astype(int)
    labels = np.stack([digit % 2 == 0, digit > 4, np.isin(digit, [2, 3, 5, 7]), np.isin(digit, [0, 6, 8, 9])], 1)
    np.savez(path, x=(table[:, :-1] / 16).astype(np.float32), y=labels.astype(np.float32))
    return labels.astype(np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("tasks")
    labels = multilabel_digits(root / "multilabel.npz")
    jobs = []
    for backend in BACKENDS:
        job = [[*REGRESSION, f"backend={backend}", f"run.dir={root / backend / 'regression'}"],
               [*MULTILABEL, f"data.path={root / 'multilabel.npz'}", f"backend={backend}",
                f"run.dir={root / backend / 'multilabel'}"]]
        jobs.append(partial(train_many, job, root / f"{backend}.json", launcher="horovodrun", np_=2))
    for proc in together(*jobs):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root, labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_beats_the_mean_predictor(runs: tuple[Path, np.ndarray], backend: str) -> None:
    run = runs[0] / backend / "regression"
    final = read_metrics(run)[-1]
    summary = read_summary(run)
    assert summary["task"] == "regression" and summary["metrics"] == ["mae", "rmse", "r2"]
    assert summary["world_size"] == 2 and summary["best"]["metric"] == "val_mae"
    # The mean predictor has R^2 = 0 on its own data (about 0 on held-out data); its RMSE is the targets' std (77).
    assert final["val_r2"] > 0.25, final
    assert final["val_rmse"] < 0.9 * 77.0 and final["val_mae"] < final["val_rmse"]
    assert final["val_loss"] == pytest.approx(final["val_rmse"] ** 2, rel=1e-6)  # mse is the mean squared error


@pytest.mark.parametrize("backend", BACKENDS)
def test_multilabel_beats_the_per_label_prior(runs: tuple[Path, np.ndarray], backend: str) -> None:
    root, labels = runs
    final = read_metrics(root / backend / "multilabel")[-1]
    prior = (labels.mean(axis=0) > 0.5).astype(np.float32)  # each label's majority value, whatever the input
    prior_exact = float((labels == prior).all(axis=1).mean())
    tp = float((labels * prior).sum())
    prior_f1 = 2 * tp / (2 * tp + float(((1 - labels) * prior).sum()) + float((labels * (1 - prior)).sum()))
    assert final["val_exact_match"] > prior_exact + 0.3, (final, prior_exact)
    assert final["val_f1_micro"] > prior_f1 + 0.2 and final["val_f1_macro"] > 0.7, (final, prior_f1)
