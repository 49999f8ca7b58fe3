"""Regression and multilabel: hvdtrain against scikit-learn's linear models and the trivial predictors, on the
same train/validation split (docs/tasks.md, "Against scikit-learn").

    python -m benchmarks.tasks [--np 2]

hvdtrain trains an mlp under `horovodrun -np N` on both backends; scikit-learn fits `Ridge` (regression) and one
`LogisticRegression` per label (multilabel) on the training part of the split hvdtrain made (read back with
hvdtrain's own loader), and every row is scored on the same validation samples with scikit-learn's metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.launch import horovodrun, run
from benchmarks.report import machine, update_section
from hvdtrain.config import load_config
from hvdtrain.data import load_dataset
from hvdtrain.data.datasets import digits_file

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
BACKENDS = ("torch", "tensorflow")
REGRESSION = ["--config", "configs/diabetes.yaml"]
MULTILABEL = ["task=multilabel", "data.name=npz", "model.name=mlp", "model.hidden_units=[64]", "model.dropout=0",
              "train.epochs=10", "train.batch_size=16"]


def multilabel_digits(path: Path) -> None:
    """Digits' 64 pixels as features; four yes/no labels: even, above 4, prime, drawn with a loop (0, 6, 8, 9)."""
    table = np.loadtxt(digits_file(), delimiter=",")
    digit = table[:, -1].astype(int)
    labels = np.stack([digit % 2 == 0, digit > 4, np.isin(digit, [2, 3, 5, 7]), np.isin(digit, [0, 6, 8, 9])], 1)
    np.savez(path, x=(table[:, :-1] / 16).astype(np.float32), y=labels.astype(np.float32))


def split(args: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and validation arrays of the run these arguments configure, as hvdtrain splits them."""
    config = args[1] if args[:1] == ["--config"] else None
    cfg = load_config(config, [a for a in args if "=" in a])
    dataset = load_dataset(cfg.data, cfg.seed, cfg.task)
    x, y = dataset.train.read(np.arange(len(dataset.train)))
    x_val, y_val = dataset.val.read(np.arange(len(dataset.val)))
    return x, y, x_val, y_val


def regression_scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn import metrics

    return {"mae": metrics.mean_absolute_error(y, predicted), "rmse": metrics.root_mean_squared_error(y, predicted),
            "r2": metrics.r2_score(y, predicted)}


def multilabel_scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn import metrics

    y, predicted = y.astype(int), predicted.astype(int)
    return {"f1_micro": metrics.f1_score(y, predicted, average="micro", zero_division=0),
            "f1_macro": metrics.f1_score(y, predicted, average="macro", zero_division=0),
            "exact_match": metrics.accuracy_score(y, predicted)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--np", dest="np_", type=int, default=2)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression, RidgeCV

    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "multilabel.npz"
        multilabel_digits(data)
        tasks = {"regression": (REGRESSION, regression_scores), "multilabel": ([*MULTILABEL, f"data.path={data}"],
                                                                               multilabel_scores)}
        for task, (config, score) in tasks.items():
            x, y, x_val, y_val = split(config)
            if task == "regression":
                rows.append((task, "mean of the training targets", score(y_val, np.full_like(y_val, y.mean(0)))))
                ridge = RidgeCV(alphas=np.logspace(-4, 2, 13)).fit(x, y)  # alpha by cross-validation on training
                rows.append((task, f"scikit-learn Ridge (alpha={ridge.alpha_:.2g}, by RidgeCV)",
                             score(y_val, ridge.predict(x_val))))
            else:
                prior = np.tile(y.mean(0) > 0.5, (len(y_val), 1))
                rows.append((task, "each label's majority value", score(y_val, prior)))
                fitted = np.stack([LogisticRegression(max_iter=2000).fit(x, y[:, j]).predict(x_val)
                                   for j in range(y.shape[1])], 1)
                rows.append((task, "scikit-learn LogisticRegression per label", score(y_val, fitted)))
            for backend in BACKENDS:
                run_dir = Path(tmp) / f"{task}-{backend}"
                run([*horovodrun(args.np_), sys.executable, "-m", "hvdtrain", *config, f"backend={backend}",
                     "run.progress=off", f"run.dir={run_dir}"])
                final = json.loads((run_dir / "summary.json").read_text())["final"]
                rows.append((task, f"hvdtrain mlp, {backend}, np={args.np_}",
                             {k.removeprefix("val_"): v for k, v in final.items()
                              if k.removeprefix("val_") in score(y_val, y_val) and k.startswith("val_")}))
    lines = ["## Against scikit-learn", "",
             f"`python -m benchmarks.tasks --np {args.np_}`: every row scored on the same validation samples (the "
             "split hvdtrain makes from `seed`), with scikit-learn's metrics for scikit-learn's models and "
             "hvdtrain's exact named sums for hvdtrain's runs. Regression: configs/diabetes.yaml (the mlp [32], Adam "
             f"0.05, 30 epochs). Multilabel: `{' '.join(MULTILABEL)}` on digits' pixels with four yes/no labels. "
             f"{machine()}.", ""]
    for task in tasks:
        names = list(next(r[2] for r in rows if r[0] == task))
        lines += [f"| {task} | " + " | ".join(f"val {n}" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {model} | " + " | ".join(f"{values[n]:.4f}" for n in names) + " |"
                  for t, model, values in rows if t == task]
        lines.append("")
    update_section("tasks", "\n".join(lines), DOCUMENT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
