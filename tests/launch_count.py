"""Counts the processes the test suite starts, by launcher, so that docs/testing.md's launch counts are measured,
not estimated: every `subprocess.Popen` made by the pytest process is classified by its command words.

The count is of what the tests start (a `horovodrun -np 2` is one launch, whatever it starts below it). The
summary ends every pytest run; `HVDTRAIN_LAUNCH_LOG=FILE` also writes each test's counts as JSON."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

LAUNCHERS = ("horovodrun", "mpirun", "srun", "torchrun")


def classify(args: Any) -> str:
    """horovodrun, mpirun, srun or torchrun when one of them starts the command; python for a plain Python
    process; other for anything else (bash, make, ...)."""
    words = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    names = [os.path.basename(os.fsdecode(w)).split()[0] if os.fsdecode(w).strip() else "" for w in words]
    for name in names:
        if name in LAUNCHERS:
            return name
    if any(name.startswith("python") for name in names[:1]):
        return "python"
    return "other"


class LaunchCounter:
    """Patches Popen for the session; `current` is the test being run."""

    def __init__(self) -> None:
        self.by_test: dict[str, Counter[str]] = defaultdict(Counter)
        self.current = "(collection)"
        self._original = subprocess.Popen.__init__

    def install(self) -> None:
        counter, original = self, self._original

        def counting_init(popen: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
            counter.by_test[counter.current][classify(args)] += 1
            original(popen, args, *rest, **kwargs)

        subprocess.Popen.__init__ = counting_init  # type: ignore[method-assign]

    def uninstall(self) -> None:
        subprocess.Popen.__init__ = self._original  # type: ignore[method-assign]

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_test.values():
            total.update(counts)
        return total

    def summary_lines(self, top: int = 10) -> list[str]:
        total = self.totals()
        launches = sum(n for kind, n in total.items() if kind in LAUNCHERS)
        kinds = ", ".join(f"{kind} {n}" for kind, n in total.most_common())
        lines = [f"processes started by the tests: {sum(total.values())} ({kinds}); multi-rank launches: {launches}"]
        ranked = sorted(self.by_test.items(), key=lambda item: -sum(item[1].values()))[:top]
        lines += [f"  {sum(c.values()):3d}  {test}" for test, c in ranked if c]
        return lines

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({test: dict(c) for test, c in self.by_test.items()}, indent=1, sort_keys=True))
