"""Where training stands, besides the framework's own state: what checkpoints and elastic commits save.

Data order and augmentation are functions of (seed, rank, epoch, position) and the LR schedule of the
step, so these few numbers are all the loop needs to continue exactly where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainingState:
    """The loop's position in the run; every rank holds the same values."""

    epoch: int = 0              # completed epochs
    position: int = 0           # samples of the current epoch's global order already consumed
    step: int = 0               # optimizer steps taken since the run began
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    sums: dict[str, Any] = field(default_factory=dict)  # the epoch's named sums so far, over all ranks (plain JSON)
    epoch_time: float = 0.0     # seconds spent in the current epoch's steps so far
    data_wait: float = 0.0      # of which waiting for the input pipeline
    started: bool = False       # the run's outputs exist (a worker joining an elastic job must not restart them)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingState:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("sums"), list):  # checkpoints before named sums: loss, correct, count[, skipped]
            loss, correct, count, skipped = [*known["sums"], 0.0, 0.0, 0.0, 0.0][:4]
            known["sums"] = {"loss": loss, "accuracy.correct": correct, "count": count, "skipped": skipped}
        return cls(**copy.deepcopy(known))

    def copy(self) -> TrainingState:
        return TrainingState.from_dict(self.to_dict())

    def assign(self, other: TrainingState) -> None:
        """Takes `other`'s values in place (those holding a reference to this object see them)."""
        for key, value in other.copy().to_dict().items():
            setattr(self, key, value)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Records a completed epoch and moves to the start of the next."""
        self.history.append(record)
        self.epoch += 1
        self.position = 0
        self.sums = {}
        self.epoch_time = self.data_wait = 0.0
