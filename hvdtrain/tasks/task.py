"""What the model learns (`task`), its loss (`train.loss`) and metrics (`train.metrics`), resolved once from the
config and used by the loop, the backends and the commands after training (docs/tasks.md)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvdtrain.errors import ConfigError
from hvdtrain.tasks.metrics import BUILTIN_METRICS, WINDOW_SUMMARY, Metric, Sums, user_metric

TASKS = ("classification", "regression", "multilabel", "language_model")
BUILTIN_LOSSES = ("cross_entropy", "mse", "mae", "huber", "bce")
# The losses each task accepts: what its targets can be compared with.
TASK_LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "mae", "huber"), "multilabel": ("bce",),
               "language_model": ("cross_entropy",)}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse", "multilabel": "bce",
                "language_model": "cross_entropy"}
DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("mae", "rmse", "r2"),
                   "multilabel": ("f1_micro", "f1_macro", "exact_match"),
                   "language_model": ("perplexity", "token_accuracy")}
LOSS, COUNT = "loss", "count"  # the sums every task has: the loss summed over samples, and the samples


def is_import_path(name: str) -> bool:
    return ":" in name


@dataclass(frozen=True)
class TaskSpec:
    """The resolved task: its loss (a built-in name or an import path) and metrics, in config order."""

    name: str = "classification"
    loss: str = "cross_entropy"
    metrics: tuple[Metric, ...] = field(default_factory=lambda: (BUILTIN_METRICS["accuracy"],))

    @property
    def int_targets(self) -> bool:
        """Classification: int labels (n,); language_model: int next tokens (n, block_size); the others: float
        targets (n, width)."""
        return self.name in ("classification", "language_model")

    @property
    def sequences(self) -> bool:
        """language_model: token windows in, per-window summaries out (hvdtrain/tasks/metrics.py, WINDOW_SUMMARY)."""
        return self.name == "language_model"

    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def batch_sums(self, outputs: np.ndarray, targets: np.ndarray) -> Sums:
        """Every metric's sums over one batch, keyed '<metric>.<sum>' (the loss and count come from the step)."""
        sums: Sums = {}
        for metric in self.metrics:
            for key, value in metric.batch_sums(outputs, targets).items():
                sums[f"{metric.name}.{key}"] = np.asarray(value, dtype=np.float64)
        return sums

    def step_sums(self, result: Any, targets: np.ndarray) -> Sums:
        """The named sums of a step's or batch's `StepResult` (hvdtrain/backend.py) against its targets."""
        return {LOSS: np.float64(result.loss_sum), COUNT: np.float64(result.count),
                **self.batch_sums(result.outputs, targets)}

    def empty_sums(self, width: int) -> Sums:
        """Zero sums of every key and shape (a rank with no batch still takes part in the allreduce)."""
        if self.sequences:  # outputs: one summary per window
            width = len(WINDOW_SUMMARY)
        targets = np.zeros((0,), np.int64) if self.int_targets else np.zeros((0, width), np.float32)
        sums = self.batch_sums(np.zeros((0, width), np.float32), targets)
        return {LOSS: np.float64(0.0), COUNT: np.float64(0.0), **sums}

    def values(self, totals: Mapping[str, np.ndarray]) -> dict[str, float | None]:
        """loss and every metric from the totals: {'loss': ..., 'accuracy': ...}."""
        count = float(totals[COUNT])
        result: dict[str, float | None] = {"loss": float(totals[LOSS]) / count if count else None}
        for metric in self.metrics:
            own = {key.split(".", 1)[1]: value for key, value in totals.items() if key.startswith(metric.name + ".")}
            result[metric.name] = metric.value(own, count)
        return result

    def lower_is_better(self, field_name: str) -> bool:
        """For a metrics.jsonl field ('val_r2', 'train_loss', 'epoch_time_s'): whether lower is better."""
        return field_lower_is_better(field_name, self.metrics)


def field_lower_is_better(field_name: str, metrics: tuple[Metric, ...] = ()) -> bool:
    """Whether lower is better for a metrics.jsonl field: as its metric in `metrics` (else the built-in of that
    name) declares; the loss and times: lower; anything else (a user metric not given): higher."""
    base = field_name.removeprefix("train_").removeprefix("val_")
    for metric in (*metrics, *BUILTIN_METRICS.values()):
        if base == metric.name:
            return metric.lower_is_better
    return base in ("loss", "epoch_time_s", "eval_time_s", "data_wait_fraction")


# Record fields that are not metrics of the task but may still drive early stopping or a sweep.
OTHER_FIELDS = ("lr", "loss_scale", "epoch_time_s", "samples_per_s", "data_wait_fraction", "eval_time_s")


def metric_names(task: str, metrics: tuple[str, ...] | None) -> tuple[str, ...]:
    """The names metrics.jsonl gives the task's metrics (a user metric 'pkg.mod:f1' is 'f1'), without imports."""
    chosen = DEFAULT_METRICS.get(task, ()) if metrics is None else metrics
    return tuple(name.rpartition(":")[2] for name in chosen)


def metric_fields(names: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics.jsonl fields that metric-driven options may name."""
    return tuple(f"{split}_{n}" for split in ("train", "val") for n in ("loss", *names)) + OTHER_FIELDS


def check_metric_field(names: tuple[str, ...], key: str, value: str | None) -> None:
    """A one-line error when option `key` names a field this run does not record."""
    fields = metric_fields(names)
    if value is None or value in fields:
        return
    close = difflib.get_close_matches(value, fields, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(fields)}"
    raise ConfigError(f"config key {key}: {value!r} is not a metrics.jsonl field of this run (metrics "
                      f"{list(names)}): {hint}")


def check_task_keys(task: str, loss: str | None, metrics: tuple[str, ...] | None) -> None:
    """`task`, `train.loss` and `train.metrics` fit together (built-ins checked; import paths are imported by
    `resolve_task`, in the process that trains): else a one-line error naming the key and the fix."""
    if task not in TASKS:
        raise ConfigError(f"config key task: {task!r} is not a task: choose one of {', '.join(TASKS)}")
    loss = loss or DEFAULT_LOSS[task]
    if not is_import_path(loss) and loss not in TASK_LOSSES[task]:
        fits = ", ".join(TASK_LOSSES[task])
        what = "does not fit" if loss in BUILTIN_LOSSES else "is not a built-in loss of"
        raise ConfigError(f"config key train.loss: {loss!r} {what} task={task}: choose {fits} or your own "
                          "'package.module:function'")
    for name in DEFAULT_METRICS[task] if metrics is None else metrics:
        metric = BUILTIN_METRICS.get(name)
        if not is_import_path(name) and (metric is None or task not in metric.tasks):
            choices = ", ".join(m.name for m in BUILTIN_METRICS.values() if task in m.tasks)
            what = "does not fit" if metric is not None else "is not a built-in metric of"
            raise ConfigError(f"config key train.metrics: {name!r} {what} task={task}: choose from "
                              f"{choices} or your own 'package.module:function'")
    names = metric_names(task, metrics)
    if len(set(names)) != len(names) or "loss" in names:
        raise ConfigError(f"config key train.metrics: {list(names)} repeats a name (or uses 'loss'): name each "
                          "metric once")


def resolve_task(task: str, loss: str | None, metrics: tuple[str, ...] | None) -> TaskSpec:
    """The task's spec from the config keys `task`, `train.loss` and `train.metrics` (null: the task's default).
    User metrics by import path are imported here."""
    from hvdtrain.imports import import_by_path

    check_task_keys(task, loss, metrics)
    resolved: list[Metric] = []
    for name in DEFAULT_METRICS[task] if metrics is None else metrics:
        if not is_import_path(name):
            resolved.append(BUILTIN_METRICS[name])
            continue
        obj = import_by_path(name, f"train.metrics entry {name!r}", ConfigError)
        try:
            resolved.append(user_metric(name.rpartition(":")[2], obj))
        except TypeError as exc:
            raise ConfigError(f"train.metrics entry {name!r}: {exc}: name a function (outputs, targets) -> "
                              "per-sample values, or an object with batch_sums and value") from None
    return TaskSpec(task, loss or DEFAULT_LOSS[task], tuple(resolved))


def import_user_loss(name: str) -> Callable[..., Any]:
    """train.loss by import path: the user's function (outputs, targets) -> per-sample losses, of the backend's
    framework (each backend checks the shape it returns)."""
    from hvdtrain.imports import import_by_path

    user = import_by_path(name, f"train.loss={name!r}", ConfigError)
    if not callable(user):
        raise ConfigError(f"train.loss={name!r} names a {type(user).__name__}, not a function (outputs, targets) "
                          "-> per-sample losses")
    return user
