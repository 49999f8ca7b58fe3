"""The tracker interface, and the trackers rank 0 runs for a config (docs/tracking.md).

A tracker is a callback that rank 0 alone runs, after the run's own reporters (metrics.jsonl holds an epoch when
its `on_epoch_end` is called), plus `finish()`, called once summary.json is written. MLflow (`report.py`),
Weights & Biases (`wandb_report.py`) and the user's own (`tracking.user: package.module:factory`) are all one.

The user's factory is imported on every rank, so that a wrong path stops every rank with the same one-line error;
it is called on rank 0 only: a tracker package belongs inside the factory (or the tracker), not at the top of the
module, so that other ranks never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import Callback, CallbackContext
from hvdtrain.config import Config
from hvdtrain.errors import ConfigError
from hvdtrain.imports import import_by_path
from hvdtrain.tracking.sync import one_line

TrackerFactory = Callable[[Config, Path, bool], "Tracker"]


class Tracker(Callback):
    """A tracker: the callback hooks it needs (rank 0 only), and `finish` after summary.json is written.

    `resuming` (given to the factory): the run continues an earlier one in run.dir (train.resume, an elastic
    restart); a tracker that keeps its run's id in run.dir reattaches to that run instead of starting one."""

    def finish(self) -> None:
        """The run ended and summary.json is written: send the rest and close the tracker's run."""


def load_user_tracker(cfg: Config) -> TrackerFactory | None:
    """tracking.user's factory (every rank imports it; rank 0 calls it)."""
    path = cfg.tracking.user
    if path is None:
        return None
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"tracking.user {path!r} is not 'package.module:factory': write it like "
                          "my_pkg.trackers:make_tracker")
    factory: Any = import_by_path(path, f"tracking.user {path!r}", ConfigError)
    if not callable(factory):
        raise ConfigError(f"tracking.user {path!r} is a {type(factory).__name__}, not a factory: name a function "
                          "(or class) taking (cfg, run_dir, resuming) and returning a hvdtrain.tracking.Tracker")
    return factory  # type: ignore[no-any-return]


class Guarded(Tracker):
    """A user's tracker under the rule every tracker keeps: its first failure prints one warning and the run goes
    on without it."""

    def __init__(self, name: str, make: Callable[[], Tracker], say: Callable[[str], None]) -> None:
        self.name, self.say = name, say
        self.inner: Tracker | None = None
        self.inner = self._call(make)
        hooks = ("on_train_begin", "on_epoch_end", "on_step_report", "on_train_end", "finish")
        if self.inner is not None and not any(callable(getattr(self.inner, h, None)) for h in hooks):
            say(f"warning: tracking: {name} returned {type(self.inner).__name__}, which has none of the hooks "
                f"{', '.join(hooks)}: return a hvdtrain.tracking.Tracker; training goes on without it")
            self.inner = None

    def _call(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as error:  # noqa: BLE001  # a tracker never stops training
            self.inner = None
            self.say(f"warning: tracking: {self.name} failed ({type(error).__name__}: {one_line(error)}); training "
                     "goes on without it")
            return None

    def _hook(self, name: str, *args: Any) -> Any:
        method = getattr(self.inner, name, None) if self.inner is not None else None
        return self._call(lambda: method(*args)) if method is not None else None

    def on_train_begin(self, ctx: CallbackContext) -> None:
        self._hook("on_train_begin", ctx)

    def on_epoch_begin(self, ctx: CallbackContext, epoch: int) -> None:
        self._hook("on_epoch_begin", ctx, epoch)

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self._hook("on_epoch_end", ctx, record)  # a tracker's answer never stops the run

    def on_step_end(self, ctx: CallbackContext, step: int, loss: float) -> None:
        self._hook("on_step_end", ctx, step, loss)

    def on_step_report(self, ctx: CallbackContext, report: Any) -> None:
        self._hook("on_step_report", ctx, report)

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        self._hook("on_train_end", ctx, summary)

    def finish(self) -> None:
        self._hook("finish")


def rank0_trackers(cfg: Config, run_dir: Path, resuming: bool, say: Callable[[str], None],
                   user: TrackerFactory | None) -> list[Tracker]:
    """The trackers the config turns on, for rank 0 (the packages are imported here, on rank 0 only)."""
    trackers: list[Tracker] = []
    if cfg.tracking.mlflow_uri:
        from hvdtrain.tracking.report import TrackingReport

        trackers.append(TrackingReport(cfg, run_dir, resuming, say))
    if cfg.tracking.wandb_project:
        from hvdtrain.tracking.wandb_report import WandbReport

        trackers.append(WandbReport(cfg, run_dir, resuming, say))
    if user is not None:
        trackers.append(Guarded(f"tracking.user {cfg.tracking.user}", lambda: user(cfg, run_dir, resuming), say))
    return trackers
