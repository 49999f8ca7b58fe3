"""Writes one named section of docs/benchmarks.md, leaving the other sections as they are."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
REPORT_ENV = "HVDTRAIN_BENCH_REPORT"  # another file to write (the suite's --report; tests)
HEADER = ("# Benchmarks\n\n`python -m benchmarks` runs every section below (`--only NAME,...` some of them; see "
          "[performance.md](performance.md)). Each section is written by the script named in it; rerun that command "
          "to reproduce it. Numbers come from one run on the machine stated in the section, with the variants "
          "interleaved; compare ratios within a section, not across machines.\n")


def machine() -> str:
    """One line naming the machine and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mpi = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.splitlines()
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"{mpi[0] if mpi else 'no MPI'}, {datetime.now(timezone.utc):%Y-%m-%d}")


def update_section(name: str, body: str, document: Path | None = None) -> None:
    """Replaces (or appends) the section delimited by `<!-- bench:NAME -->` markers, in docs/benchmarks.md or in
    `document`."""
    report = Path(os.environ.get(REPORT_ENV) or document or REPORT)
    text = report.read_text() if report.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    report.write_text(text)
    shown = report.relative_to(Path.cwd()) if report.is_relative_to(Path.cwd()) else report
    print(f"wrote section '{name}' of {shown}", file=sys.stderr)
