"""`python -m hvdtrain evaluate RUN_DIR [--checkpoint PATH] [key=value ...]`: a finished run's model scored on
its validation split (default) or on other data (`data.*` overrides), under a launcher like training: every
sample once across ranks, the sums reduced exactly. Writes RUN_DIR/eval.json and RUN_DIR/eval-confusion.png.

Evaluating a run on its own split repeats the run's last evaluation: the same samples, model, preprocessing,
eval_step and named sums, so the metrics equal the run's last val_* values (val_loss up to the order of float
summation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.data import Dataset, load_dataset
from hvdtrain.data.pipeline import InputPipeline, resolve_workers
from hvdtrain.distributed.error_exit import ending_with_errors_reported
from hvdtrain.errors import DataError
from hvdtrain.files import write_atomic
from hvdtrain.lifecycle.finished_run import FinishedRun, checkpoint_source, open_run
from hvdtrain.lifecycle.trained_model import TrainedModel, load_trained_model
from hvdtrain.tasks.metrics import CONFUSION, EVAL_TABLES, Sums, per_class_table
from hvdtrain.tasks.task import COUNT, TaskSpec
from hvdtrain.tracking.sync import send_evaluation
from hvdtrain.training import collectives

EVAL_FILE, CONFUSION_PNG = "eval.json", "eval-confusion.png"


@dataclass(frozen=True)
class Evaluation:
    """Sums over every evaluated sample, on every rank: the task's named sums and those of its table
    (hvdtrain/tasks/metrics.py, EVAL_TABLES)."""

    task: TaskSpec
    totals: Sums
    skipped: int

    @property
    def count(self) -> int:
        return int(round(float(self.totals[COUNT])))

    @property
    def confusion(self) -> np.ndarray | None:
        """Classification: (classes, classes), rows true class, columns predicted."""
        return self.totals.get(f"{CONFUSION.name}.counts")

    def report(self, run: FinishedRun, source: str, weights: str, world_size: int) -> dict[str, Any]:
        values = {f"val_{name}": value for name, value in self.task.values(self.totals).items()}
        report: dict[str, Any] = {**values, "samples": self.count, "skipped_samples": self.skipped}
        table = per_class_table(self.task.name, self.totals, self.count, run.class_names) \
            if self.task.name in EVAL_TABLES else {}
        if self.task.sequences:  # a vocabulary, not classes: no table
            report.update({"vocab_size": len(run.class_names), "block_size": run.image_shape[0], "weights": weights,
                           "data": source, "world_size": world_size})
            return report
        if self.confusion is not None:
            report["per_class_accuracy"] = {name: row["accuracy"] for name, row in table.items()}
            report["confusion_matrix"] = self.confusion.astype(int).tolist()
        else:
            report["per_label" if self.task.name == "multilabel" else "per_target"] = table
        report.update({"class_names": list(run.class_names), "data": source, "weights": weights,
                       "world_size": world_size})
        return report


def _check_tokens_match(run: FinishedRun, dataset: Dataset) -> None:
    """language_model: the data's tokens are the run's tokenizer's, in windows the model's positions hold."""
    from hvdtrain.data.text import token_directory
    from hvdtrain.text.tokenizer import TOKENIZER_FILE

    mine, theirs = run.dir / TOKENIZER_FILE, token_directory(run.cfg.data) / TOKENIZER_FILE
    if dataset.num_classes != len(run.class_names) or (
            mine.is_file() and theirs.is_file() and mine.read_bytes() != theirs.read_bytes()):
        raise DataError(f"evaluate: data.path={run.cfg.data.path} holds tokens of another tokenizer than the run's "
                        f"({run.dir / TOKENIZER_FILE}): tokenize the corpus with the run's tokenizer, or evaluate a "
                        "run trained on these tokens")
    if dataset.image_shape[0] > run.image_shape[0]:
        raise DataError(f"evaluate: data.block_size={dataset.image_shape[0]} is longer than the model's context "
                        f"({run.image_shape[0]} positions): set data.block_size={run.image_shape[0]} or less")


def _check_matches(run: FinishedRun, dataset: Dataset) -> None:
    if run.cfg.task == "language_model":
        _check_tokens_match(run, dataset)
        return
    if dataset.class_names != run.class_names:
        raise DataError(f"evaluate: the data has classes {list(dataset.class_names)[:6]}... but the model was trained "
                        f"on {list(run.class_names)[:6]}...: give data with the run's class folders (same names)"
                        if len(run.class_names) > 6 else
                        f"evaluate: the data has classes {list(dataset.class_names)} but the model was trained on "
                        f"{list(run.class_names)}: give data with the same classes")
    if dataset.image_shape != run.image_shape:
        raise DataError(f"evaluate: the data's images are {list(dataset.image_shape)} but the model takes "
                        f"{list(run.image_shape)}: set data.image_size=[{run.image_shape[0]},{run.image_shape[1]}] "
                        "(and the same channels)")


def evaluate(model: TrainedModel, dataset: Dataset) -> Evaluation:
    """The model on this rank's share of `dataset.val`, reduced over all ranks (a collective): the training loop's
    evaluation, with the sums of the task's table (confusion matrix, per label, per target) added."""
    cfg, comm = model.run.cfg, model.backend.comm
    world = comm.world()
    task, width = cfg.task_spec(), len(model.run.class_names)
    counted = replace(task, metrics=(*task.metrics, *([EVAL_TABLES[task.name]] if task.name in EVAL_TABLES else [])))
    workers = resolve_workers(cfg.data.workers, dataset.val.on_disk, 1, world.local_size)
    with InputPipeline(cfg, dataset, workers) as inputs:
        with inputs.eval_loader(world.rank, world.size, model.preprocess()) as batches:
            totals, skipped = collectives.evaluate(comm, model.backend, batches, lambda: len(batches.skipped),
                                                   counted, width)
    return Evaluation(task, totals, skipped)


def write_confusion_png(path: Path, confusion: np.ndarray, names: tuple[str, ...]) -> None:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 30:
        top = confusion.max() or 1
        for (i, j), value in np.ndenumerate(confusion):
            ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=8,
                    color="white" if value > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def run_evaluate(run_dir: str, overrides: list[str], checkpoint: str | None) -> dict[str, Any]:
    """The command: evaluates, prints the metrics (rank 0), writes eval.json and the PNG (rank 0)."""
    run = open_run(run_dir, "evaluate", overrides)
    source = checkpoint_source(run, checkpoint, "evaluate")
    model = load_trained_model(run, source)
    comm = model.backend.comm
    with ending_with_errors_reported(comm):
        dataset = comm.agree(lambda: load_dataset(run.cfg.data, run.cfg.seed, run.cfg.task))
        comm.agree(lambda: _check_matches(run, dataset))
        result = evaluate(model, dataset)
        if result.count == 0:
            raise DataError("evaluate: there is no validation sample to evaluate (data.val_fraction=0 and no "
                            "val/ set): point data.path at data with a validation set, or set data.val_fraction")
        world = comm.world()
        data = f"{run.cfg.data.name}" + (f" {run.cfg.data.path}" if run.cfg.data.path else "") + \
            " (validation split)"
        report = result.report(run, data, str(source), world.size)
        if world.rank == 0:
            write_atomic(run.dir / EVAL_FILE, json.dumps(report, indent=1) + "\n")
            wrote = [run.dir / EVAL_FILE]
            if result.confusion is not None:
                write_confusion_png(run.dir / CONFUSION_PNG, result.confusion, run.class_names)
                wrote.append(run.dir / CONFUSION_PNG)
            shown = " ".join(f"{k} {v:.6f}" for k, v in report.items() if k.startswith("val_") and v is not None)
            print(f"evaluated {run.dir} ({run.backend}, {source.name}) on {result.count} samples of {data}: "
                  f"{shown}; wrote {' and '.join(map(str, wrote))}", flush=True)
            warning = send_evaluation(run.dir, run.cfg, wrote, report)  # the run's MLflow run, if it has one
            if warning:
                print(warning, flush=True)
        return report
