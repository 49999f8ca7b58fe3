"""Callbacks: hooks the loop calls on every rank, the built-in early stopping, and user callbacks named by
import path in `callbacks.user`.

Evaluation and LR-schedule stepping are built into the loop (every epoch, every step); callbacks see
their results: `on_epoch_end` gets the epoch's record with the validation metrics and the LR.

A callback asks to stop by returning True from `on_epoch_end`. The loop combines the answers of all ranks
with one allreduce, so when any rank asks, every rank stops after the same epoch.

The run's own reporting (metrics files, TensorBoard, progress, profile, sparsity: hvdtrain/reporting/)
is made of callbacks too; besides the hooks below they use `on_step_report`, which any callback may define.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvdtrain.config import CallbacksConfig, Config
from hvdtrain.errors import ConfigError
from hvdtrain.imports import import_by_path


@dataclass(frozen=True)
class StepReport:
    """One optimizer step as the loop saw it (this rank's view)."""

    epoch: int             # 1-based
    step: int              # optimizer steps since the run began (1-based)
    step_in_epoch: int     # 1-based, of steps_in_epoch taken in this (re)entry of the epoch
    steps_in_epoch: int
    loss: float            # this rank's mean loss over the step's window
    samples_per_s: float   # global samples per second in the epoch so far
    lr: float
    loss_scale: float | None
    data_wait_s: float     # blocked on the input pipeline for this step's micro-batches
    backend_s: float       # in the backend's train_step, of which comm_s blocked on the gradient allreduce
    comm_s: float
    total_s: float         # since the end of the previous step


@dataclass(frozen=True)
class CallbackContext:
    """What a callback may want to know about the run (the world as of the current (re)start)."""

    cfg: Config
    rank: int
    world_size: int
    run_dir: Path
    epochs: int = 0  # the run's epochs: train.epochs, or as many as train.max_steps needs


class Callback:
    """Base class of callbacks; override the hooks you need. They run on every rank."""

    def on_train_begin(self, ctx: CallbackContext) -> None:
        """Before the first step (and again after an elastic reset, with the new world)."""

    def on_epoch_begin(self, ctx: CallbackContext, epoch: int) -> None:
        """Before the steps of `epoch` (1-based)."""

    def on_step_end(self, ctx: CallbackContext, step: int, loss: float) -> None:
        """After optimizer step `step` (1-based, counted over the run) with this rank's window loss."""

    def on_step_report(self, ctx: CallbackContext, report: StepReport) -> None:
        """After every optimizer step, with its numbers (after `on_step_end`)."""

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> bool | None:
        """After evaluation, with the epoch's metrics record; return True to stop training."""
        return None

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        """After the last epoch, with the run summary."""

    def __str__(self) -> str:
        return type(self).__name__


class EarlyStopping(Callback):
    """Stops when `metric` has not improved by more than `min_delta` for `patience` epochs.

    The metric is minimised or maximised as its metric declares (`lower_is_better`). Records are allreduced before the
    callbacks see them, so every rank makes the same decision; it starts from the completed epochs'
    `history` on resume, so a resumed run stops where the uninterrupted one would have.
    """

    def __init__(self, metric: str, patience: int, min_delta: float = 0.0,
                 history: list[dict[str, Any]] | None = None, lower_is_better: bool | None = None) -> None:
        from hvdtrain.tasks.task import field_lower_is_better

        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.minimise = field_lower_is_better(metric) if lower_is_better is None else lower_is_better
        self.history = list(history or [])

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> bool:
        self.history.append(record)
        return self.should_stop(self.history)

    def __str__(self) -> str:
        return f"early stopping ({self.metric} without improvement for {self.patience} epoch(s))"

    def should_stop(self, history: list[dict[str, Any]]) -> bool:
        """Whether the epochs so far (records in order) end in `patience` epochs without improvement."""
        values = [r.get(self.metric) for r in history]
        if any(v is None for v in values):
            missing = next(r["epoch"] for r in history if r.get(self.metric) is None)
            raise ConfigError(f"callbacks.early_stopping_metric={self.metric!r} has no value at epoch {missing}: "
                              f"choose a field of metrics.jsonl ({', '.join(sorted(history[-1]))})")
        best, since = None, 0
        for value in values:
            better = best is None or (value < best - self.min_delta if self.minimise
                                      else value > best + self.min_delta)
            best, since = (value, 0) if better else (best, since + 1)
        return since >= self.patience


def load_user_callback(path: str, cfg: Config) -> object:
    """`package.module:name` -> name(cfg), checked to be a callback-like object: a Callback, or any object with
    some of its hooks (the list calls only the hooks an object has)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"callbacks.user entry {path!r} is not 'package.module:name': write it like "
                          "my_pkg.callbacks:MyCallback")
    factory: Any = import_by_path(path, f"callbacks.user entry {path!r}", ConfigError)
    callback = factory(cfg)
    hooks = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_step_report", "on_epoch_end", "on_train_end")
    if not any(callable(getattr(callback, h, None)) for h in hooks):
        raise ConfigError(f"callbacks.user entry {path!r} returned {type(callback).__name__}, which has none of "
                          f"the hooks {', '.join(hooks)}: return an hvdtrain.callbacks.Callback")
    return callback


class CallbackList:
    """The run's callbacks in order: early stopping (if configured), the user's, then the run's reporters."""

    def __init__(self, cfg: Config, user: list[object]) -> None:
        self.cfg: CallbacksConfig = cfg.callbacks
        self.run_cfg = cfg
        self.user = user  # callback-like objects (see load_user_callback)
        self.active: list[object] = []

    @classmethod
    def from_config(cls, cfg: Config) -> CallbackList:
        return cls(cfg, [load_user_callback(path, cfg) for path in cfg.callbacks.user])

    def begin(self, ctx: CallbackContext, history: list[dict[str, Any]], reporters: Sequence[Callback] = ()) -> None:
        """Starts (or restarts) the callbacks for a run whose completed epochs are `history`; `reporters` (the
        run's own reporting) follow the user's callbacks."""
        self.active = [*self.user, *reporters]
        if self.cfg.early_stopping_metric:
            metric = self.cfg.early_stopping_metric
            self.active.insert(0, EarlyStopping(metric, self.cfg.early_stopping_patience,
                                                self.cfg.early_stopping_min_delta, history,
                                                self.run_cfg.lower_is_better(metric)))
        self._call("on_train_begin", ctx)

    def _call(self, hook: str, *args: Any) -> list[Any]:
        return [getattr(cb, hook)(*args) for cb in self.active if callable(getattr(cb, hook, None))]

    def epoch_begin(self, ctx: CallbackContext, epoch: int) -> None:
        self._call("on_epoch_begin", ctx, epoch)

    def step_end(self, ctx: CallbackContext, report: StepReport) -> None:
        self._call("on_step_end", ctx, report.step, report.loss)
        self._call("on_step_report", ctx, report)

    def epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> list[str]:
        """The callbacks of this rank that ask to stop, by name (the loop agrees it with the other ranks)."""
        hook = "on_epoch_end"
        return [str(cb) for cb in self.active if callable(getattr(cb, hook, None)) and getattr(cb, hook)(ctx, record)]

    def train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        self._call("on_train_end", ctx, summary)
