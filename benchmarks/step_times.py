"""A callback (callbacks.user=[benchmarks.step_times:StepTimes]) that keeps every optimizer step's time as the
loop measures it (StepReport.total_s: from the end of the previous step to the end of this one, data included) and
writes them to run.dir/step_times.json on rank 0 at the end: what a hand-written loop times around its own steps,
so the two are compared by the same statistic (benchmarks/lm.py)."""

from __future__ import annotations

import json
from typing import Any

SKIPPED_STEPS = 10  # the first steps pay for allocation and warm-up: left out on both sides (handwritten_lm.py too)


class StepTimes:
    def __init__(self, cfg: Any) -> None:
        self.seconds: list[float] = []

    def on_step_report(self, ctx: Any, report: Any) -> None:
        self.seconds.append(report.total_s)

    def on_train_end(self, ctx: Any, summary: dict[str, Any]) -> None:
        if ctx.rank == 0:
            (ctx.run_dir / "step_times.json").write_text(json.dumps(self.seconds))


def tokens_per_s(seconds: list[float], tokens_per_step: int) -> float:
    """Tokens per second over the steps after the first SKIPPED_STEPS (all of them in a shorter run)."""
    timed = seconds[SKIPPED_STEPS:] or seconds
    return tokens_per_step * len(timed) / sum(timed)
