"""Rank 0's progress display: a live bar on a terminal, plain lines at a steady pace otherwise.

Every line is written whole by one `write` call of its own, flushed at once. Open MPI (so horovodrun and
mpirun) gives ranks a pseudo-terminal and tags each piece it reads from it with `[job,rank]<stdout>:`, so
whatever reaches it apart is shown apart. `print(text)` writes the text and its newline separately, which
came out as `...samples/s[1,0]<stdout>:` and a line holding only the tag in most runs with
PYTHONUNBUFFERED=1. Several lines in one write fare no better: the pseudo-terminal passes a write of more
than 2048 bytes on in pieces, and the resolved config (2.4 kB) was seen cut at byte 2048, mid-line. Two
limits remain outside the writer: a single line of over 2 kB, and more than about 4 kB written before the
launcher reads (its reads end wherever they end; a rank's usual burst, the header and config, is ~3 kB).

Lines mode writes at most one step line every `line_interval_s` seconds (5 s) after the last line of any
kind, whatever the epoch's length, plus each epoch's closing line: a short epoch shows only its closing
line, a long one a step line every 5 s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from hvdtrain.distributed.environment import under_launcher

LINE_INTERVAL_S = 5.0  # lines mode: at least this long between two step lines
BAR_INTERVAL_S = 0.1  # bar mode: at most this often a redraw


class Progress:
    """Shows steps, loss and samples/s of the running epoch. Silent unless `enabled` (rank 0).

    `mode` is run.progress: `bar` redraws one line with carriage returns, `lines` prints whole lines, `off`
    prints nothing, and `auto` picks `bar` on a terminal outside any launcher and `lines` otherwise.
    `clock` (seconds, monotonic) paces the output; tests pass their own.
    """

    def __init__(self, mode: str, enabled: bool, stream: TextIO | None = None, width: int = 24, *,
                 clock: Callable[[], float] = time.monotonic, line_interval_s: float = LINE_INTERVAL_S) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            # mpirun hands ranks a pseudo-terminal but forwards their output line by line with prefixes,
            # where a redrawn bar turns into clutter: under a launcher, print lines.
            mode = "bar" if _isatty(self.stream) and not under_launcher() else "lines"
        self.mode = mode if enabled else "off"
        self.width = width
        self._clock = clock
        self._line_interval_s = line_interval_s
        self._epoch = self._epochs = self._steps = 0
        self._last_draw: float | None = None  # bar: when it was last drawn in this epoch
        self._bar_open = False  # bar: drawn on the current line, which has no newline yet
        self._bar_len = 0
        self._last_line = clock()  # lines: when the last line of any kind was written

    def print(self, text: str) -> None:
        """Text of one or more lines (rank 0 only), each line written whole."""
        if self.mode != "off":
            self._write_lines(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._last_draw = None

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        """After `step` (1-based) of this epoch's steps."""
        if self.mode == "bar":
            now = self._clock()
            if self._last_draw is not None and now - self._last_draw < BAR_INTERVAL_S and step < self._steps:
                return
            self._last_draw = now
            done = int(self.width * min(step, self._steps) / max(1, self._steps))
            bar = "#" * done + "." * (self.width - done)
            text = (f"{self._prefix()} [{bar}] {step}/{self._steps} "
                    f"loss {loss:.4f} {samples_per_s:,.0f} samples/s")
            # Spaces over what a longer previous drawing left at the end of the line.
            self._write("\r" + text.ljust(self._bar_len))
            self._bar_open, self._bar_len = True, len(text)
        elif self.mode == "lines" and step < self._steps:  # the last step's line is the closing line
            if self._clock() - self._last_line >= self._line_interval_s:
                self._write_lines(f"{self._prefix()} step {step}/{self._steps} loss {loss:.4f} "
                                  f"{samples_per_s:,.0f} samples/s")

    def end_epoch(self, record: dict[str, Any], metrics: tuple[str, ...] = ("accuracy",)) -> None:
        """Closes the epoch (and its bar) with its metrics over all ranks (accuracy shown as 'acc')."""
        def shown(split: str) -> str:  # split: "" (training) or "val_"
            prefix = split or "train_"
            return "".join(f" {split}{'acc' if m == 'accuracy' else m} {record[prefix + m]:.4f}"
                           for m in metrics if record.get(prefix + m) is not None)

        val = f" val_loss {record['val_loss']:.4f}{shown('val_')}" if record.get("val_loss") is not None else ""
        self.print(f"{self._prefix()} done: loss {record['train_loss']:.4f}{shown('')}"
                   f"{val} lr {record['lr']:.4g} {record['epoch_time_s']:.2f}s "
                   f"{record['samples_per_s']:,.0f} samples/s")

    def _write_lines(self, text: str) -> None:
        # One write per line, with its newline; the first also ends the bar's line if one is open.
        for i, line in enumerate(text.split("\n")):
            self._write(("\n" if self._bar_open and i == 0 else "") + line + "\n")
        self._bar_open, self._bar_len = False, 0
        self._last_line = self._clock()

    def _write(self, data: str) -> None:
        # Flushed at once, so that a buffered stream does not merge lines into one larger write either.
        self.stream.write(data)
        self.stream.flush()

    def _prefix(self) -> str:
        return f"epoch {self._epoch + 1}/{self._epochs}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
