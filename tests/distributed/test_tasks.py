"""Regression and multilabel tasks through real Horovod jobs on both backends (docs/tasks.md).

- Learning: a regression on scikit-learn's diabetes and a multilabel run (digits' pixels as features, four
  yes/no labels) each beat the trivial predictor clearly, at np=2.
- Exact metrics: a run's last validation metrics at np=2 (metrics.jsonl), `evaluate` of its model at np=3 (89 or
  360 validation samples: uneven shards and last batches) and scikit-learn over `predict`'s outputs at np=1
  agree within 1e-6.
- Equivalence, for `mse` (two targets) and `bce`: np=2 x batch 8 x accumulation 2, np=1 x 8 x accumulation 4 and
  np=1 x 32 give the same weights (<= 1e-5: float32 summation order, as tests/distributed/test_policy.py).
- A user loss by import path that computes Huber gives the built-in `huber`'s weights and metrics (<= 1e-6).
- kill -9 in the middle of an epoch, then train.resume=auto: the regression run's metrics.jsonl and weights equal
  the uninterrupted run's (the named sums of the unfinished epoch travel in the checkpoint).
- A user loss that returns its mean instead of per-sample losses: one line naming train.loss, exit 2, on every
  rank.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import run_pool
from conftest import (
    REPO,
    max_weight_diff,
    numbers,
    read_metrics,
    read_summary,
    read_weights,
    run_hvdtrain,
    together,
)
from run_pool import PoolRun

from hvdtrain.data.datasets import digits_file

pytestmark = pytest.mark.distributed
sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")

BACKENDS = ("torch", "tensorflow")
EXACT, EQUIVALENT = 1e-6, 1e-5
MLP = ["model.name=mlp", "model.hidden_units=[32]", "model.dropout=0", "run.progress=off"]
DIABETES = [*MLP, "task=regression", "data.name=diabetes", "optim.name=adam", "optim.lr=0.05", "train.epochs=30",
            "train.batch_size=16"]
MULTILABEL = [*MLP, "task=multilabel", "data.name=npz", "train.epochs=4", "train.batch_size=16"]
# Few steps of plain SGD at a fixed LR: only the batching differs between the equivalent runs.
SHORT = [*MLP, "data.name=npz", "train.epochs=1", "train.max_steps_per_epoch=5", "optim.name=sgd", "optim.lr=0.1",
         "optim.momentum=0.9", "policy.lr_scaling=none"]
BATCHINGS = {"np2": ["train.batch_size=8", "policy.accumulation_steps=2"],
             "acc4": ["train.batch_size=8", "policy.accumulation_steps=4"], "b32": ["train.batch_size=32"]}
USER_LOSSES = '''
def huber_torch(outputs, targets):
    import torch
    error = (outputs - targets).abs()
    return torch.where(error <= 1.0, 0.5 * error ** 2, error - 0.5).mean(dim=1)


def huber_tf(outputs, targets):
    import tensorflow as tf
    error = tf.abs(outputs - targets)
    return tf.reduce_mean(tf.where(error <= 1.0, 0.5 * tf.square(error), error - 0.5), axis=1)


def mean_squared(outputs, targets):  # wrong on purpose: the batch mean, not one loss per sample
    return ((outputs - targets) ** 2).mean()
'''
USER_HUBER = {"torch": "user_losses:huber_torch", "tensorflow": "user_losses:huber_tf"}


def regression_npz(path: Path) -> None:
    """Diabetes with two standardised targets (progression, and progression / 2 + BMI), 89 held out."""
    table = np.loadtxt(digits_file().parent / "diabetes_data_raw.csv.gz")
    target = np.loadtxt(digits_file().parent / "diabetes_target.csv.gz")
    x = ((table - table.mean(0)) / table.std(0)).astype(np.float32)
    progression = (target - target.mean()) / target.std()
    y = np.stack([progression, progression / 2 + x[:, 2]], 1).astype(np.float32)
    np.savez(path, x=x[:353], y=y[:353], x_val=x[353:], y_val=y[353:])


def digits_npz(multilabel: Path, classification: Path) -> None:
    """Digits as 64 features, the last 360 held out: with four yes/no labels (even, above 4, prime, drawn with a
    loop: 0, 6, 8, 9), and with the digit as its class."""
    table = np.loadtxt(digits_file(), delimiter=",")
    digit = table[:, -1].astype(int)
    labels = np.stack([digit % 2 == 0, digit > 4, np.isin(digit, [2, 3, 5, 7]), np.isin(digit, [0, 6, 8, 9])],
                      1).astype(np.float32)
    x = (table[:, :-1] / 16).astype(np.float32)
    np.savez(multilabel, x=x[:-360], y=labels[:-360], x_val=x[-360:], y_val=labels[-360:])
    np.savez(classification, x=x[:-360], y=digit[:-360], x_val=x[-360:], y_val=digit[-360:])


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """root/<backend>/<name>, pooled with other modules' runs (tests/run_pool.py): per backend the np=2 runs and
    the np=1 runs."""
    regression_npz(root / "regression.npz")
    digits_npz(root / "multilabel.npz", root / "classification.npz")
    (root / "user_losses.py").write_text(USER_LOSSES)
    data = {"mse": ["task=regression", f"data.path={root / 'regression.npz'}"],
            "bce": ["task=multilabel", f"data.path={root / 'multilabel.npz'}"]}
    runs = []
    for backend in BACKENDS:
        out = root / backend
        two = [[*DIABETES, f"backend={backend}", f"run.dir={out / 'diabetes'}"],
               [*MULTILABEL, f"data.path={root / 'multilabel.npz'}", f"backend={backend}",
                f"run.dir={out / 'multilabel'}"]]
        two += [[*SHORT, *data[loss], *BATCHINGS["np2"], f"backend={backend}", f"run.dir={out / loss / 'np2'}"]
                for loss in data]
        if backend == "torch":  # classification's metrics, for the check against scikit-learn
            two.append([*SHORT, f"data.path={root / 'classification.npz'}", "train.metrics=[accuracy,top5_accuracy]",
                        "train.batch_size=16", f"backend={backend}", f"run.dir={out / 'classification'}"])
        one = [[*SHORT, *data[loss], *BATCHINGS[name], f"backend={backend}", f"run.dir={out / loss / name}"]
               for loss in data for name in ("acc4", "b32")]
        one += [[*SHORT, *data["mse"], "train.batch_size=16", f"train.loss={loss}", f"backend={backend}",
                 f"run.dir={out / 'huber' / name}"] for name, loss in (("builtin", "huber"),
                                                                      ("user", USER_HUBER[backend]))]
        runs += [PoolRun(backend, 2, tuple(args)) for args in two] + [PoolRun(backend, 1, tuple(args)) for args in one]
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_pool.trained(__file__, tmp_path_factory)



@pytest.mark.parametrize("backend", BACKENDS)
def test_regression_beats_the_mean_predictor(runs: Path, backend: str) -> None:
    run = runs / backend / "diabetes"
    final, summary = read_metrics(run)[-1], read_summary(run)
    assert summary["task"] == "regression" and summary["metrics"] == ["mae", "rmse", "r2"]
    assert summary["world_size"] == 2 and summary["best"]["metric"] == "val_mae"
    # The mean predictor has R^2 = 0 on its own data (about 0 on held-out data); its RMSE is the targets' std (77).
    assert final["val_r2"] > 0.25, final
    assert final["val_rmse"] < 0.9 * 77.0 and final["val_mae"] < final["val_rmse"]
    assert final["val_loss"] == pytest.approx(final["val_rmse"] ** 2, rel=EXACT)  # mse: the mean squared error


@pytest.mark.parametrize("backend", BACKENDS)
def test_multilabel_beats_the_per_label_prior(runs: Path, backend: str) -> None:
    final = read_metrics(runs / backend / "multilabel")[-1]
    with np.load(runs / "multilabel.npz") as data:
        train, val = data["y"], data["y_val"]
    prior = (train.mean(axis=0) > 0.5).astype(int)  # each label's majority value, whatever the input
    prior_exact = sklearn_metrics.accuracy_score(val.astype(int), np.tile(prior, (len(val), 1)))
    prior_f1 = sklearn_metrics.f1_score(val.astype(int), np.tile(prior, (len(val), 1)), average="micro")
    assert final["val_exact_match"] > prior_exact + 0.3, (final, prior_exact)
    assert final["val_f1_micro"] > prior_f1 + 0.2 and final["val_f1_macro"] > 0.7, (final, prior_f1)


def _evaluate_and_predict(runs: Path, run: Path, data: str, top_k: int
                          ) -> tuple[subprocess.CompletedProcess, list[str], list[list[str]]]:
    """`evaluate` at np=3 and `predict` on the validation inputs, at the same time (different output files);
    evaluate's process and predict's header and rows."""
    with np.load(runs / data) as arrays:
        np.savez(run / "val-inputs.npz", x=arrays["x_val"])
    proc, _ = together(
        lambda: run_hvdtrain(["evaluate", str(run)], launcher="mpirun", np_=3),
        lambda: run_hvdtrain(["predict", str(run), str(run / "val-inputs.npz"), "--out", str(run / "val.csv"),
                              "--top-k", str(top_k)]))
    with (run / "val.csv").open() as f:
        rows = list(csv.reader(f))
    return proc, rows[0], rows[1:]


@pytest.mark.parametrize("backend, task", [("torch", "regression"), ("tensorflow", "multilabel"),
                                           ("torch", "classification")])
def test_metrics_at_np_2_and_3_equal_scikit_learn_over_the_predictions(runs: Path, backend: str, task: str) -> None:
    """The metric code is shared by the backends: regression and classification are checked on torch's outputs,
    multilabel on TensorFlow's."""
    run, data = {"regression": (runs / backend / "mse" / "np2", "regression.npz"),
                 "multilabel": (runs / backend / "multilabel", "multilabel.npz"),
                 "classification": (runs / backend / "classification", "classification.npz")}[task]
    trained = read_metrics(run)[-1]  # np=2
    proc, header, rows = _evaluate_and_predict(runs, run, data, 5 if task == "classification" else 1)
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["world_size"] == 3 and evaluated["samples"] == (89 if task == "regression" else 360), proc.stdout
    with np.load(runs / data) as arrays:
        truth = arrays["y_val"]
    m = sklearn_metrics
    if task == "regression":
        assert header == ["input", "target0", "target1"]
        predicted = np.array([[float(v) for v in row[1:]] for row in rows], dtype=np.float32).astype(np.float64)
        truth = truth.astype(np.float64)
        reference = {"val_mae": m.mean_absolute_error(truth, predicted),
                     "val_rmse": m.root_mean_squared_error(truth, predicted), "val_r2": m.r2_score(truth, predicted),
                     "val_loss": float(np.mean((predicted - truth) ** 2))}
        for j, name in enumerate(header[1:]):  # evaluate's per-target table
            row = evaluated["per_target"][name]
            assert row["r2"] == pytest.approx(m.r2_score(truth[:, j], predicted[:, j]), abs=EXACT)
            assert row["mae"] == pytest.approx(m.mean_absolute_error(truth[:, j], predicted[:, j]), abs=EXACT)
    elif task == "classification":
        assert header[:4] == ["input", "class_index", "class_name", "probability"]
        top1 = np.array([int(row[1]) for row in rows])
        top5 = [{row[2], *row[4::2]} for row in rows]  # the class names, here the digits
        reference = {"val_accuracy": m.accuracy_score(truth, top1),
                     "val_top5_accuracy": float(np.mean([str(t) in five for t, five in zip(truth, top5, strict=True)]))}
        assert reference["val_top5_accuracy"] > reference["val_accuracy"]  # the two metrics differ here
    else:
        assert header == ["input", "labels", "0", "1", "2", "3"]
        predicted = np.array([[str(c) in row[1].split(";") for c in range(4)] for row in rows], dtype=int)
        reference = {"val_f1_micro": m.f1_score(truth.astype(int), predicted, average="micro", zero_division=0),
                     "val_f1_macro": m.f1_score(truth.astype(int), predicted, average="macro", zero_division=0),
                     "val_exact_match": m.accuracy_score(truth.astype(int), predicted)}
        per_label = m.f1_score(truth.astype(int), predicted, average=None, zero_division=0)
        recall = m.recall_score(truth.astype(int), predicted, average=None, zero_division=0)
        for j, name in enumerate(header[2:]):  # evaluate's per-label table
            row = evaluated["per_label"][name]
            assert row["f1"] == pytest.approx(per_label[j], abs=EXACT)
            assert row["recall"] == pytest.approx(recall[j], abs=EXACT) and row["support"] == truth[:, j].sum()
    for name, value in reference.items():
        assert trained[name] == pytest.approx(value, abs=EXACT), (name, "np=2")
        assert evaluated[name] == pytest.approx(value, abs=EXACT), (name, "np=3")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_two_ranks_and_accumulation_equal_one_large_batch(runs: Path, backend: str, loss: str) -> None:
    reference = read_weights(runs / backend / loss / "b32")
    for name in ("np2", "acc4"):
        summary = read_summary(runs / backend / loss / name)
        assert summary["global_batch_size"] == 32 and summary["steps"] == 5
        diff = max_weight_diff(read_weights(runs / backend / loss / name), reference)
        print(f"{backend} {loss} {name}: max |w - w(batch 32)| = {diff:.3g}")
        assert diff <= EQUIVALENT
    assert read_summary(runs / backend / loss / "b32")["loss"] == loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_user_huber_loss_equals_the_builtin(runs: Path, backend: str) -> None:
    builtin, user = runs / backend / "huber" / "builtin", runs / backend / "huber" / "user"
    assert read_summary(user)["loss"] == USER_HUBER[backend]
    assert max_weight_diff(read_weights(user), read_weights(builtin)) <= EXACT
    for mine, theirs in zip(read_metrics(user), read_metrics(builtin), strict=True):
        a, b = numbers(mine), numbers(theirs)
        assert a.keys() == b.keys()
        assert all(a[k] == (b[k] if b[k] is None else pytest.approx(b[k], rel=EXACT)) for k in a), (a, b)


@pytest.mark.races
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path, runs: Path) -> None:
    """torch: the named sums of the unfinished epoch (two targets' per-column sums) come back from the checkpoint."""
    args = [*SHORT, "task=regression", f"data.path={runs / 'regression.npz'}", "train.batch_size=16",
            "train.max_steps_per_epoch=8", "train.epochs=2", "checkpoint.every_steps=3", "backend=torch",
            "callbacks.user=[fault_callbacks:Faults]",
            "train.threads_per_rank=1"]  # the uninterrupted and the killed run share the two cores (and so resumes)
    full, cut = tmp_path / "full", tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "scripts"), "HVDTRAIN_TEST_KILL_RANK": "0",
           "HVDTRAIN_TEST_KILL_STEP": "11", "HVDTRAIN_TEST_KILL_MARKER": str(tmp_path / "killed")}
    _, killed = together(  # one process each: the uninterrupted run beside the one that kills itself
        lambda: run_hvdtrain([*args, f"run.dir={full}"], env={"PYTHONPATH": str(REPO / "tests" / "scripts")}),
        lambda: subprocess.run([sys.executable, "-m", "hvdtrain", *args, f"run.dir={cut}"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300))
    assert killed.returncode == -9 and (tmp_path / "killed").exists(), killed.stderr[-2000:]
    assert len(read_metrics(cut)) == 1  # killed in epoch 2, three steps after its checkpoint at step 9
    run_hvdtrain([*args, f"run.dir={cut}", "train.resume=auto"], env={"PYTHONPATH": str(REPO / "tests" / "scripts")})
    assert max_weight_diff(read_weights(cut), read_weights(full)) <= EXACT
    assert [numbers(r) for r in read_metrics(cut)] == [numbers(r) for r in read_metrics(full)]
    assert "train_r2" in read_metrics(cut)[-1]


def test_a_user_loss_returning_its_mean_stops_every_rank_in_one_line(tmp_path: Path, runs: Path) -> None:
    proc = run_hvdtrain([*SHORT, "task=regression", f"data.path={runs / 'regression.npz'}",
                         "train.loss=user_losses:mean_squared", f"run.dir={tmp_path / 'run'}"],
                        launcher="mpirun", np_=2, check=False, env={"PYTHONPATH": str(runs)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "hvdtrain: error:" in ln]
    assert len(lines) == 2 and all("train.loss='user_losses:mean_squared' returned []" in ln for ln in lines), lines
    assert "Traceback" not in proc.stderr


def test_export_and_convert_take_regression_and_multilabel_runs(runs: Path, tmp_path: Path) -> None:
    """Each checks its artifact against the trained model's outputs on validation samples before it succeeds."""
    converted, exported = together(  # one process each, at once
        lambda: run_hvdtrain(["convert", str(runs / "torch" / "mse" / "np2"), "--to", "tensorflow", "--out",
                              str(tmp_path / "converted")]),
        lambda: run_hvdtrain(["export", str(runs / "tensorflow" / "multilabel"), "--format", "onnx", "--out",
                              str(tmp_path / "multilabel.onnx")]))
    assert "converted" in converted.stdout and read_summary(tmp_path / "converted")["task"] == "regression"
    assert "max |logit diff|" in exported.stdout and (tmp_path / "multilabel.onnx").stat().st_size > 0
    assert " validation samples" in converted.stdout and " validation samples" in exported.stdout  # not images
