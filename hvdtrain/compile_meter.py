"""What train.compile costs: the graphs a backend's compiler built and the wall time of the calls that built them.

Both backends count their compiler's graphs (torch: Dynamo's unique graphs; TensorFlow: traces of its XLA
functions, one per input shape) and time every compiled call; a call during which the count grew is a
compiling call, and its whole wall time counts as compile time (its first run included: on these models a step
is milliseconds against seconds of compiling). docs/performance.md explains the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hvdtrain.backend import CompileStats


class CompileMeter:
    """Counts a compiler's graphs (`count`, a cumulative counter the backend reads) and times compiling calls."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count  # may start above zero (an earlier run in this process) or restart (new functions)
        self.graphs = 0
        self.seconds = 0.0
        self.notes: list[str] = []

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, timed as compile time if a graph was compiled during it."""
        before, start = self._count(), time.perf_counter()
        result = fn(*args)
        after = self._count()
        if after > before:
            self.seconds += time.perf_counter() - start
            self.graphs += after - before
        return result

    def note(self, line: str) -> None:
        """One line saying what runs eagerly and why (printed once by rank 0)."""
        if line not in self.notes:
            self.notes.append(line)

    def stats(self) -> CompileStats:
        return CompileStats(graphs=self.graphs, seconds=self.seconds, notes=tuple(self.notes))
