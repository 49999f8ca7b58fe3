"""Rank 0's progress display: a live bar on a terminal, a few plain lines per epoch otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from hvdtrain.distributed.environment import under_launcher


class Progress:
    """Shows steps, loss and samples/s of the running epoch. Silent unless `enabled` (rank 0)."""

    def __init__(self, mode: str, enabled: bool, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            # mpirun hands ranks a pseudo-terminal but forwards their output line by line with prefixes,
            # where a redrawn bar turns into clutter: under a launcher, print lines.
            mode = "bar" if self.stream.isatty() and not under_launcher() else "lines"
        self.mode = mode if enabled else "off"
        self.width = width
        self._epoch = self._epochs = self._steps = 0
        self._last_draw = 0.0
        self._next_line = 0

    def print(self, text: str) -> None:
        """A whole line of text (rank 0 only)."""
        if self.mode != "off":
            print(text, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._last_draw = 0.0
        self._next_line = max(1, steps // 4)

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        """After `step` (1-based) of this epoch's steps."""
        if self.mode == "bar":
            now = time.monotonic()
            if now - self._last_draw < 0.1 and step < self._steps:
                return
            self._last_draw = now
            done = int(self.width * step / max(1, self._steps))
            bar = "#" * done + "." * (self.width - done)
            self.stream.write(f"\r{self._prefix()} [{bar}] {step}/{self._steps} "
                              f"loss {loss:.4f} {samples_per_s:,.0f} samples/s")
            self.stream.flush()
        elif self.mode == "lines" and step >= self._next_line and step < self._steps:
            self._next_line += max(1, self._steps // 4)
            self.print(f"{self._prefix()} step {step}/{self._steps} loss {loss:.4f} "
                       f"{samples_per_s:,.0f} samples/s")

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Closes the epoch's bar with its averaged metrics."""
        if self.mode == "bar":
            self.stream.write("\n")
        val = ""
        if record.get("val_loss") is not None:
            val = f" val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.4f}"
        self.print(f"{self._prefix()} done: loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
                   f"{val} lr {record['lr']:.4g} {record['epoch_time_s']:.2f}s "
                   f"{record['samples_per_s']:,.0f} samples/s")

    def _prefix(self) -> str:
        return f"epoch {self._epoch + 1}/{self._epochs}"
