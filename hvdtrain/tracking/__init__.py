"""Experiment tracking (docs/tracking.md): rank 0 sends a run directory's contents to MLflow, Weights & Biases
and/or a tracker of the user's (`Tracker`, tracker.py).

Everything a tracker is sent is already in run.dir (config.yaml, metrics.jsonl, steps.jsonl, summary.json, the
plots), and so is what was sent: `tracking.json` keeps the tracker run's id and how far its history goes. Sending
is therefore one operation, "send what run.dir holds beyond what tracking.json says was sent" (`sync.py`), used
live after every epoch by the reporters (`report.py` for MLflow, `wandb_report.py` for W&B with its own state
file) and later by `python -m hvdtrain sync RUN_DIR`. That makes one tracker run per run.dir across kills, resumes
and elastic restarts, and a history equal to metrics.jsonl row for row: rows redone after a resume were sent
already, and an exact resume gives them the same values.

The tracker packages are imported only by rank 0 and only with tracking on.
"""

from hvdtrain.tracking.tracker import Tracker

__all__ = ["Tracker"]
