"""`run.profile` (`--profile`): where each optimizer step's time goes.

Per step, on every rank: data wait (blocked on the input pipeline for the step's micro-batches), compute
(the backend's step minus its communication), communication (blocked on the gradient allreduce: torch
overlaps the allreduce with the backward pass, so this is what is left exposed; the TensorFlow step runs
it after the backward pass and times it between two timestamp ops in its graph), and other (the loop's
own work: metrics, logging, progress). The timing itself costs two clock reads per step.

Rank 0 writes its steps to `profile/steps.csv`; the per-rank totals go to `profile/summary.json` and the
run's summary. Horovod's timeline of the first epoch goes to `profile/timeline.json` (with
`horovod.timeline` set, to that file, for the whole run): recording it slows collectives down, so the
summary leaves out the steps taken while it recorded, and each rank's very first step (TensorFlow traces
its functions then, allocators warm up), unless nothing else is left. steps.csv lists every step, with a
`timeline` column.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "profile"
TIMELINE = f"{FOLDER}/timeline.json"
PARTS = ("data_wait", "compute", "communication", "other")


class StepProfiler:
    """Collects the per-step breakdown of one rank (rank 0 also writes it)."""

    def __init__(self, run_dir: Path, enabled: bool, writes: bool) -> None:
        self.enabled = enabled
        self.timeline_on = False  # set by the loop while Horovod's timeline records
        self._clean = np.zeros(len(PARTS))  # steps without the timeline, after the first
        self._clean_steps = 0
        self._all = np.zeros(len(PARTS))
        self._all_steps = 0
        self._rows = io.StringIO()
        self._writer = csv.writer(self._rows)
        self._path = run_dir / FOLDER / "steps.csv" if enabled and writes else None
        if self._path is not None:  # a new file for a new run
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_text(",".join(["epoch", "step", *(f"{p}_s" for p in PARTS), "step_s", "timeline"])
                                  + "\n")

    def record(self, epoch: int, step: int, data_wait: float, backend_step: float, communication: float,
               total: float) -> None:
        """One optimizer step: seconds waiting for data, in the backend's step (of which `communication`
        blocked on the allreduce), and in all (from the end of the previous step)."""
        if not self.enabled:
            return
        communication = min(communication, backend_step)
        other = max(0.0, total - data_wait - backend_step)
        parts = (data_wait, backend_step - communication, communication, other)
        if self._all_steps and not self.timeline_on:
            self._clean += parts
            self._clean_steps += 1
        self._all += parts
        self._all_steps += 1
        if self._path is not None:
            self._writer.writerow([epoch, step, *(f"{v:.6f}" for v in parts), f"{sum(parts):.6f}",
                                   int(self.timeline_on)])

    @property
    def totals(self) -> np.ndarray:
        """Seconds per part over the steps the summary counts (see the module docstring)."""
        return self._clean if self._clean_steps else self._all

    @property
    def steps(self) -> int:
        return self._clean_steps or self._all_steps

    def flush(self) -> None:
        """Appends the rows collected so far to steps.csv (rank 0; once per epoch)."""
        if self._path is not None and self._rows.tell():
            with open(self._path, "a", newline="") as f:
                f.write(self._rows.getvalue())
            self._rows.seek(0)
            self._rows.truncate()

    def summary(self, per_rank_totals: list[list[float]], per_rank_steps: list[int]) -> dict[str, Any]:
        """Fractions of step time per part, averaged over ranks, plus each rank's own."""
        totals = np.asarray(per_rank_totals, dtype=np.float64)
        fractions = totals / np.maximum(totals.sum(axis=1, keepdims=True), 1e-12)
        mean = fractions.mean(axis=0)
        steps = max(1, sum(per_rank_steps))
        return {
            "steps_per_rank": per_rank_steps,
            "mean_step_s": float(totals.sum() / steps),
            **{f"{part}_fraction": float(mean[i]) for i, part in enumerate(PARTS)},
            "per_rank": [{f"{part}_fraction": float(f[i]) for i, part in enumerate(PARTS)} for f in fractions],
        }


def describe(summary: dict[str, Any], run_dir: Path, timeline: Path | None) -> str:
    """The closing line of a profiled run."""
    parts = ", ".join(f"{part.replace('_', ' ')} {summary[f'{part}_fraction']:.1%}" for part in PARTS)
    where = f"per-step breakdown in {run_dir / FOLDER / 'steps.csv'}"
    if timeline is not None:
        where += f", Horovod timeline in {timeline}"
    return (f"profile: mean step {summary['mean_step_s'] * 1000:.1f} ms over {sum(summary['steps_per_rank'])} "
            f"rank-steps: {parts}; {where}")
