"""A tracker of your own (docs/tracking.md): each epoch's metrics as a row of a CSV file, for a team that reads
its results with a spreadsheet or a dashboard of its own. Use it with

    PYTHONPATH=examples python -m hvdtrain --config configs/digits.yaml tracking.user=csv_tracker:make_tracker

hvdtrain calls `make_tracker` on rank 0 only. The file is run.dir/tracked.csv; set HVDTRAIN_CSV_TRACKER to write
elsewhere (a shared folder, say). A real tracker would import its client package inside `make_tracker` or the
tracker's methods, not at the top of this module: every rank imports the module, only rank 0 calls the factory.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import CallbackContext
from hvdtrain.config import Config
from hvdtrain.tracking import Tracker


class CsvTracker(Tracker):
    def __init__(self, path: Path, resuming: bool) -> None:
        self.path = path
        # A resumed run (train.resume, an elastic restart) repeats no epoch it already wrote.
        self.written = self._epochs_written() if resuming else set()
        if not resuming and path.exists():
            path.unlink()

    def _epochs_written(self) -> set[int]:
        if not self.path.is_file():
            return set()
        with self.path.open() as f:
            return {int(row["epoch"]) for row in csv.DictReader(f)}

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        if record["epoch"] in self.written:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        self.written.add(record["epoch"])

    def finish(self) -> None:
        print(f"csv tracker: {len(self.written)} epoch(s) in {self.path}", flush=True)


def make_tracker(cfg: Config, run_dir: Path, resuming: bool) -> CsvTracker:
    return CsvTracker(Path(os.environ.get("HVDTRAIN_CSV_TRACKER", run_dir / "tracked.csv")), resuming)
