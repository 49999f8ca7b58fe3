"""CompileMeter: a call counts as compiling, and its wall time as compile time, exactly when the backend's graph
count grew during it; counts that restart (new functions after an elastic reset) never go negative."""

from __future__ import annotations

import time

from hvdtrain.compile_meter import CompileMeter


def test_only_calls_that_compile_count_and_counters_may_restart() -> None:
    graphs = [5]  # an earlier run in the process left the counter at 5

    def step(compiles: int, seconds: float) -> str:
        time.sleep(seconds)
        graphs[0] += compiles
        return "done"

    meter = CompileMeter(lambda: graphs[0])
    assert meter.call(step, 2, 0.05) == "done"
    assert meter.call(step, 0, 0.2) == "done"  # a steady-state step: not compile time
    assert meter.graphs == 2 and 0.05 <= meter.seconds < 0.2
    graphs[0] = 0  # new functions, counted from zero
    meter.call(step, 1, 0.0)
    assert meter.graphs == 3
    meter.note("train.compile: a note")
    meter.note("train.compile: a note")
    stats = meter.stats()
    assert stats.graphs == 3 and stats.notes == ("train.compile: a note",)
