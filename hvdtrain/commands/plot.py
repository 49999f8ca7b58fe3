"""`python -m hvdtrain plot RUN_DIR [RUN_DIR ...]`: loss, the first metric (accuracy for classification), LR and
throughput curves of one or more runs overlaid in one PNG, to compare backends or settings at a glance. Reads
the run files only (metrics.jsonl, and steps.jsonl / summary.json when present); imports no framework."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hvdtrain.errors import UserError
from hvdtrain.files import write_atomic


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, each with the `required` keys; any other content is refused."""
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} line {number} is not valid JSON: fix or remove that line") from None
        if not isinstance(record, dict) or any(key not in record for key in required):
            raise UserError(f"{path} line {number} is not a record with {', '.join(required)}: fix or remove "
                            "that line")
        records.append(record)
    return records


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's epochs, optional steps and a label (directory name, backend and world size when known)."""
    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' does not exist: pass the run.dir of a finished or running run")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"'{run_dir}' has no metrics.jsonl: pass a run directory hvdtrain has written to")
    epochs = _read_jsonl(metrics, ("epoch",))
    if not epochs:
        raise UserError(f"'{metrics}' holds no epoch yet: plot the run after its first epoch")
    steps = _read_jsonl(run_dir / "steps.jsonl", ("step",)) if (run_dir / "steps.jsonl").is_file() else []
    label = run_dir.resolve().name
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        label += f" ({summary['backend']}, np={summary['world_size']})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {"label": label, "epochs": epochs, "steps": steps}


def first_metric(epochs: list[dict[str, Any]]) -> str:
    """The run's first metric after the loss, as metrics.jsonl orders them (docs/tasks.md); accuracy if none."""
    return next((k.removeprefix("train_") for k in epochs[0] if k.startswith("train_") and k != "train_loss"),
                "accuracy")


def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x], r[y]) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def write_plot(run_dirs: list[Path], out: Path) -> Path:
    """Writes the PNG atomically and returns its path."""
    if not out.parent.is_dir():
        raise UserError(f"--out directory '{out.parent}' does not exist: create it or write elsewhere")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a directory: name a .png file, e.g. {out / 'plot.png'}")
    runs = [read_run(d) for d in run_dirs]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = first_metric(runs[0]["epochs"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    (loss_ax, acc_ax), (lr_ax, speed_ax) = axes
    for i, run in enumerate(runs):
        color, label, epochs, steps = f"C{i % 10}", run["label"], run["epochs"], run["steps"]
        if steps:  # per-step loss, faint, with epochs on the same axis
            per_epoch = max(max(s["step"] for s in steps) / max(len(epochs), 1), 1)
            xs, ys = _series(steps, "step", "loss")
            loss_ax.plot([x / per_epoch for x in xs], ys, color=color, alpha=0.25, linewidth=0.8)
        for ax, key in ((loss_ax, "loss"), (acc_ax, metric)):
            ax.plot(*_series(epochs, "epoch", f"train_{key}"), color=color, marker="o", markersize=3,
                    label=f"{label} train")
            ax.plot(*_series(epochs, "epoch", f"val_{key}"), color=color, linestyle="--", marker="s", markersize=3,
                    label=f"{label} val")
        if steps and any(s.get("lr") is not None for s in steps):
            xs, ys = _series(steps, "step", "lr")
            lr_ax.plot([x / per_epoch for x in xs], ys, color=color, label=label)
        else:
            lr_ax.plot(*_series(epochs, "epoch", "lr"), color=color, marker="o", markersize=3, label=label)
        speed_ax.plot(*_series(epochs, "epoch", "samples_per_s"), color=color, marker="o", markersize=3, label=label)
    for ax, title in ((loss_ax, "loss"), (acc_ax, metric), (lr_ax, "learning rate"),
                      (speed_ax, "throughput (samples/s)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    lr_ax.set_ylim(bottom=0)  # float32 read-back noise would otherwise fill the axis
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(out, buffer.getvalue())
    return out
