"""The run's reporting, as callbacks on the loop: metrics files, TensorBoard, progress, profile, sparsity.

They run on every rank, like any callback, and write only where their outputs are enabled (rank 0). None of
them makes a collective: what needs every rank (profile totals, mask digests) is gathered by the loop
(hvdtrain/training/collectives.py) and reaches them in the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvdtrain.backend import Prunable
from hvdtrain.callbacks import Callback, CallbackContext, StepReport
from hvdtrain.config import PruneConfig
from hvdtrain.features.pruning import sparsity_report
from hvdtrain.reporting.outputs import RunOutputs
from hvdtrain.reporting.profile import StepProfiler, describe
from hvdtrain.reporting.progress import Progress
from hvdtrain.reporting.tensorboard import EventWriter
from hvdtrain.training.state import TrainingState


def epoch_scalars(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """metrics.jsonl fields that also go to TensorBoard, as epoch/<name> at the step the epoch ended."""
    return ("train_loss", *(f"train_{m}" for m in metrics), "val_loss", *(f"val_{m}" for m in metrics), "lr",
            "loss_scale", "samples_per_s", "data_wait_fraction", "world_size")


class ProgressReport(Callback):
    """Rank 0's progress display; the loop also prints its own lines through `print`."""

    def __init__(self, display: Progress, metrics: tuple[str, ...] = ("accuracy",)) -> None:
        self.display, self.metrics = display, metrics
        self._epoch = 0

    def print(self, text: str) -> None:
        self.display.print(text)

    def on_step_report(self, ctx: CallbackContext, report: StepReport) -> None:
        if report.epoch != self._epoch:
            self._epoch = report.epoch
            self.display.start_epoch(report.epoch - 1, ctx.epochs or ctx.cfg.train.epochs, report.steps_in_epoch)
        self.display.update(report.step_in_epoch, report.loss, report.samples_per_s)

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        if record["epoch"] != self._epoch:  # an epoch with no step left in this entry
            self._epoch = record["epoch"]
            self.display.start_epoch(record["epoch"] - 1, ctx.epochs or ctx.cfg.train.epochs, 0)
        self.display.end_epoch(record, self.metrics)


class MetricsLog(Callback):
    """metrics.jsonl (every completed epoch) and steps.jsonl (every `run.log_every_steps` steps)."""

    def __init__(self, outputs: RunOutputs, state: TrainingState, log_every: int) -> None:
        self.outputs, self.state, self.log_every = outputs, state, log_every

    def on_step_report(self, ctx: CallbackContext, report: StepReport) -> None:
        if self.log_every and report.step % self.log_every == 0:
            self.outputs.log_step({"step": report.step, "epoch": report.epoch, "loss": report.loss, "lr": report.lr,
                                   "loss_scale": report.loss_scale})

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self.outputs.write_metrics(self.state.history)  # the loop has recorded the epoch already


class TensorBoardLog(Callback):
    """TensorBoard events under RUN_DIR/tensorboard (run.tensorboard): step/* every `run.log_every_steps`
    steps, epoch/* at every epoch's last step."""

    def __init__(self, writer: EventWriter, state: TrainingState, log_every: int,
                 metrics: tuple[str, ...] = ("accuracy",)) -> None:
        self.writer, self.state, self.log_every = writer, state, log_every
        self.scalars = epoch_scalars(metrics)

    def on_step_report(self, ctx: CallbackContext, report: StepReport) -> None:
        if self.log_every and report.step % self.log_every == 0:
            self.writer.scalars(report.step, {"step/loss": report.loss, "step/lr": report.lr,
                                              "step/loss_scale": report.loss_scale})

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self.writer.scalars(self.state.step, {f"epoch/{key}": record.get(key) for key in self.scalars})
        self.writer.flush()

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        self.writer.close()


class ProfileReport(Callback):
    """run.profile: each step's data wait / compute / communication (profile/steps.csv), and at the end the
    summary the loop gathered over ranks (profile/summary.json and a closing line)."""

    def __init__(self, profiler: StepProfiler, outputs: RunOutputs, progress: ProgressReport) -> None:
        self.profiler, self.outputs, self.progress = profiler, outputs, progress

    def on_step_report(self, ctx: CallbackContext, report: StepReport) -> None:
        self.profiler.record(report.epoch, report.step, report.data_wait_s, report.backend_s, report.comm_s,
                             report.total_s)

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self.profiler.flush()

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        self.profiler.flush()
        if "profile" in summary:
            self.outputs.write_json("profile/summary.json", summary["profile"])
            timeline = summary.get("timeline")
            self.progress.print(describe(summary["profile"], self.outputs.dir,
                                         None if timeline is None else Path(timeline)))


class SparsityReport(Callback):
    """prune: sparsity.json with every kernel's zeros and dead channels, and the overall sparsity in the
    summary."""

    def __init__(self, backend: Prunable, prune: PruneConfig, outputs: RunOutputs) -> None:
        self.backend, self.prune, self.outputs = backend, prune, outputs

    def on_train_end(self, ctx: CallbackContext, summary: dict[str, Any]) -> None:
        report = sparsity_report(self.backend.prunable(), self.prune)
        self.outputs.write_json("sparsity.json", report)
        summary["sparsity"] = report["sparsity"]
