"""Metrics as named sums and a formula, so that a value over many batches and ranks is exact.

A metric turns a batch's model outputs and targets (numpy, on the host, the same code for both backends)
into sums (`batch_sums`); sums add over micro-batches, steps and ranks (one allreduce, by name); `value`
makes the metric from the totals and the sample count. The value at any number of ranks, with any uneven
last batch, is then the value one process gets over the whole set: no per-rank averages are averaged.

Outputs are the model's raw outputs: logits for classification and multilabel (a label is predicted when
its logit is above 0, i.e. its probability above 0.5), values for regression. Targets are int labels (n,)
for classification, floats (n, T) for regression and 0/1 (n, C) for multilabel. Multi-column regression
metrics are the mean over columns of each column's metric (scikit-learn's 'uniform_average').

language_model: a step's outputs are not the logits (a window's are block_size x vocabulary floats) but one
summary per window, computed on the device: WINDOW_SUMMARY's columns, the window's mean next-token loss and its
share of tokens whose highest logit is the target. Every window holds block_size targets, so means over windows
are means over tokens: perplexity = exp(mean token loss) and token_accuracy are exact across ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from hvdtrain.errors import ConfigError

Sums = dict[str, np.ndarray]
ALL_TASKS = ("classification", "regression", "multilabel", "language_model")


@dataclass(frozen=True)
class Metric:
    """A metric: its name in metrics.jsonl (`train_<name>`, `val_<name>`), the tasks it applies to, whether
    lower values are better, its batch sums and its formula over the totals."""

    name: str
    tasks: tuple[str, ...]
    lower_is_better: bool
    batch_sums: Callable[[np.ndarray, np.ndarray], Sums]    # (outputs, targets) -> sums over the batch
    value: Callable[[Mapping[str, np.ndarray], float], float | None]  # (totals, sample count) -> the metric


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 per entry; 0 where a label was neither present nor predicted (scikit-learn's zero_division=0)."""
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)


def _confusion_counts(outputs: np.ndarray, targets: np.ndarray) -> Sums:
    predicted, actual = outputs > 0, targets > 0.5
    return {"tp": (predicted & actual).sum(axis=0).astype(np.float64),
            "fp": (predicted & ~actual).sum(axis=0).astype(np.float64),
            "fn": (~predicted & actual).sum(axis=0).astype(np.float64)}


def _top_k_correct(outputs: np.ndarray, targets: np.ndarray, k: int) -> float:
    k = min(k, outputs.shape[1])
    target_logit = np.take_along_axis(outputs, targets.reshape(-1, 1), axis=1)
    # Counted as correct when fewer than k classes score strictly higher than the target (ties favour it).
    return float(((outputs > target_logit).sum(axis=1) < k).sum())


WINDOW_SUMMARY = ("token_loss", "token_accuracy")  # language_model: the columns of a step's outputs


def _per_column_mean(values: np.ndarray, count: float) -> float | None:
    return float(np.mean(values / count)) if count else None


def _r2(totals: Mapping[str, np.ndarray], count: float) -> float | None:
    if not count:
        return None
    total_squares = totals["y_sq"] - totals["y"] ** 2 / count
    # A constant column: scikit-learn's r2_score gives 1.0 for a perfect fit, else 0.0 (force_finite).
    per_column = np.where(total_squares > 0, 1.0 - totals["sq_err"] / np.where(total_squares > 0, total_squares, 1),
                          np.where(totals["sq_err"] == 0, 1.0, 0.0))
    return float(np.mean(per_column))


BUILTIN_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", ("classification",), False,
           lambda o, t: {"correct": np.float64((o.argmax(axis=1) == t).sum())},
           lambda s, n: float(s["correct"] / n) if n else None),
    Metric("top5_accuracy", ("classification",), False,
           lambda o, t: {"correct": np.float64(_top_k_correct(o, t, 5))},
           lambda s, n: float(s["correct"] / n) if n else None),
    Metric("mae", ("regression",), True,
           lambda o, t: {"abs_err": np.abs(o.astype(np.float64) - t).sum(axis=0)},
           lambda s, n: _per_column_mean(s["abs_err"], n)),
    Metric("rmse", ("regression",), True,
           lambda o, t: {"sq_err": np.square(o.astype(np.float64) - t).sum(axis=0)},
           lambda s, n: float(np.mean(np.sqrt(s["sq_err"] / n))) if n else None),
    Metric("r2", ("regression",), False,
           lambda o, t: {"y": t.sum(axis=0, dtype=np.float64), "y_sq": np.square(t.astype(np.float64)).sum(axis=0),
                         "sq_err": np.square(o.astype(np.float64) - t).sum(axis=0)},
           _r2),
    Metric("f1_micro", ("multilabel",), False,
           lambda o, t: {k: v.sum() for k, v in _confusion_counts(o, t).items()},
           lambda s, n: float(_f1(s["tp"], s["fp"], s["fn"])) if n else None),
    Metric("f1_macro", ("multilabel",), False,
           _confusion_counts,
           lambda s, n: float(np.mean(_f1(s["tp"], s["fp"], s["fn"]))) if n else None),
    Metric("exact_match", ("multilabel",), False,
           lambda o, t: {"matched": np.float64(((o > 0) == (t > 0.5)).all(axis=1).sum())},
           lambda s, n: float(s["matched"] / n) if n else None),
    Metric("perplexity", ("language_model",), True,
           lambda o, t: {"token_loss": np.float64(o[:, 0].sum(dtype=np.float64))},
           lambda s, n: float(np.exp(s["token_loss"] / n)) if n else None),
    Metric("token_accuracy", ("language_model",), False,
           lambda o, t: {"correct": np.float64(o[:, 1].sum(dtype=np.float64))},
           lambda s, n: float(s["correct"] / n) if n else None),
)}


def _confusion(outputs: np.ndarray, targets: np.ndarray) -> Sums:
    counts = np.zeros((outputs.shape[1], outputs.shape[1]))
    np.add.at(counts, (targets, outputs.argmax(axis=1)), 1)
    return {"counts": counts}


def _per_target(outputs: np.ndarray, targets: np.ndarray) -> Sums:
    error = outputs.astype(np.float64) - targets
    return {"abs_err": np.abs(error).sum(axis=0), "sq_err": np.square(error).sum(axis=0),
            "y": targets.sum(axis=0, dtype=np.float64), "y_sq": np.square(targets.astype(np.float64)).sum(axis=0)}


# Not metrics of their own: `evaluate` adds the one of the task to its sums, reduced with the metrics' sums in
# the same allreduce, for its per-class, per-label or per-target table (EVAL_TABLES, then `per_class_table`).
CONFUSION = Metric("confusion", ("classification",), False, _confusion, lambda s, n: None)
PER_LABEL = Metric("per_label", ("multilabel",), False, _confusion_counts, lambda s, n: None)
PER_TARGET = Metric("per_target", ("regression",), False, _per_target, lambda s, n: None)
EVAL_TABLES = {"classification": CONFUSION, "multilabel": PER_LABEL, "regression": PER_TARGET}


def per_class_table(task: str, totals: Mapping[str, np.ndarray], count: float,
                    names: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """`evaluate`'s table from an EVAL_TABLES entry's totals: per label precision, recall, F1 and support
    (multilabel), per target mae, rmse and r2 (regression), per class accuracy and support (classification)."""
    table = EVAL_TABLES[task]
    own = {key.split(".", 1)[1]: value for key, value in totals.items() if key.startswith(table.name + ".")}

    def ratio(a: float, b: float) -> float | None:
        return float(a / b) if b else None

    rows: dict[str, dict[str, float | None]] = {}
    for i, name in enumerate(names):
        if task == "multilabel":
            tp, fp, fn = (float(own[k][i]) for k in ("tp", "fp", "fn"))
            rows[name] = {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
                          "f1": float(_f1(np.float64(tp), np.float64(fp), np.float64(fn))), "support": tp + fn}
        elif task == "regression":
            column = {k: own[k][i:i + 1] for k in own}
            rows[name] = {"mae": ratio(float(column["abs_err"][0]), count),
                          "rmse": float(np.sqrt(column["sq_err"][0] / count)) if count else None,
                          "r2": _r2(column, count)}
        else:
            support = float(own["counts"][i].sum())
            rows[name] = {"accuracy": ratio(float(own["counts"][i, i]), support), "support": support}
    return rows


def user_metric(name: str, obj: object) -> Metric:
    """A metric from the user's object (train.metrics by import path), named `name` (language_model: its outputs
    are the per-window summaries, WINDOW_SUMMARY):
    - a function `(outputs, targets) -> per-sample values` (numpy): its value is their mean over all samples,
      higher is better unless the function has `lower_is_better = True`;
    - an object with `batch_sums(outputs, targets) -> {name: array}`, `value(totals, count) -> float` and
      optionally `lower_is_better`: its own sums and formula (e.g. a precision from true and false positives).
    """
    lower = bool(getattr(obj, "lower_is_better", False))
    batch_sums, value = getattr(obj, "batch_sums", None), getattr(obj, "value", None)
    if callable(batch_sums) and callable(value):
        return Metric(name, ALL_TASKS, lower,
                      lambda o, t: {k: np.asarray(v, dtype=np.float64) for k, v in batch_sums(o, t).items()},
                      lambda s, n: None if not n else float(value(s, n)))
    if not callable(obj):
        raise TypeError(f"a {type(obj).__name__} is neither a function nor an object with batch_sums and value")

    def per_sample_sum(outputs: np.ndarray, targets: np.ndarray) -> Sums:
        values = np.asarray(obj(outputs, targets), dtype=np.float64)
        if values.shape != (len(outputs),):
            raise ConfigError(f"train.metrics entry {name!r} returned shape {list(values.shape)} for a batch of "
                              f"{len(outputs)}: return one value per sample (the trainer sums them exactly)")
        return {"total": np.float64(values.sum())}

    return Metric(name, ALL_TASKS, lower, per_sample_sum,
                  lambda s, n: float(s["total"] / n) if n else None)
