"""Training from a Python script with hvdtrain's entry point: your loss, metric and callback as Python objects.

    horovodrun -np 2 python examples/train_from_python.py [run.dir=runs/script ...]

The same run from the command line names the same objects by import path (from the repository's root):

    horovodrun -np 2 python -m hvdtrain --config configs/diabetes.yaml \\
        train.loss=examples.train_from_python:huber \\
        'train.metrics=[mae,r2,examples.train_from_python:within_25]'
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import hvdtrain
from hvdtrain.callbacks import Callback, CallbackContext
from hvdtrain.errors import UserError


def huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A framework-native loss: one value per sample (the trainer takes the mean), here Huber with delta 10."""
    error = (outputs - targets).abs()
    return torch.where(error <= 10.0, 0.5 * error ** 2, 10.0 * (error - 5.0)).mean(dim=1)


def within_25(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """A metric: per-sample values on numpy arrays (the trainer sums them exactly over every rank)."""
    return (np.abs(outputs - targets) <= 25.0).all(axis=1).astype(np.float64)


class BestSoFar(Callback):
    """Keeps the best validation R^2; rank 0 prints it at the end (every rank runs the callbacks)."""

    def __init__(self) -> None:
        self.best = -np.inf

    def on_epoch_end(self, ctx: CallbackContext, record: dict) -> bool:
        self.best = max(self.best, record["val_r2"])
        return False  # True would ask every rank to stop

    def on_train_end(self, ctx: CallbackContext, summary: dict) -> None:
        if ctx.rank == 0:
            print(f"best val_r2 {self.best:.4f}; final val_within_25 {summary['final']['val_within_25']:.4f}")


if __name__ == "__main__":
    try:  # returns the run's summary (what summary.json holds) on every rank
        hvdtrain.train("configs/diabetes.yaml", sys.argv[1:], loss=huber, metrics=["mae", "r2", within_25],
                       callbacks=[BestSoFar()])
    except UserError as exc:  # bad input: its one line is already printed on every rank
        sys.exit(exc.exit_code)
