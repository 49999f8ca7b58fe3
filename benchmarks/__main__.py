"""The whole benchmark suite, one section of docs/benchmarks.md after another.

    python -m benchmarks [--quick] [--repeats N] [--only overhead,allreduce,...] [--report FILE]

Each section runs its variants side by side (interleaved repeats, medians, ratios) and rewrites its part
of the report with the machine, versions and the command that reproduces it. `--quick` runs every
section on tiny sizes with one repeat, to check the runner; its numbers mean nothing, so it writes to
`--report` (required with --quick) rather than docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from benchmarks.report import REPORT_ENV

# (module, arguments in full mode); --quick passes --quick and --repeats 1 instead.
SECTIONS: dict[str, list[str]] = {
    "overhead": ["--repeats", "3"],
    "scaling": ["--repeats", "3"],
    "allreduce": ["--repeats", "3"],
    "datawait": ["--repeats", "1"],
    "augment": ["--repeats", "3"],
    "policy": ["--repeats", "3"],
    "backends": ["--repeats", "3"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks the runner")
    parser.add_argument("--repeats", type=int, help="override every section's repeats")
    parser.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--report", type=Path, help="write here instead of docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    if args.quick and args.report is None:
        parser.error("--quick needs --report FILE: quick numbers must not replace docs/benchmarks.md")
    if args.report is not None:
        os.environ[REPORT_ENV] = str(args.report.resolve())
    for name in names:
        section_args = ["--quick", "--repeats", "1"] if args.quick else SECTIONS[name]
        if args.repeats is not None and not args.quick:
            section_args = [a if prev != "--repeats" else str(args.repeats)
                            for prev, a in zip([None, *section_args], section_args, strict=False)]
        start = time.perf_counter()
        print(f"benchmarks: {name} {' '.join(section_args)}", file=sys.stderr, flush=True)
        importlib.import_module(f"benchmarks.{name}").main(section_args)
        print(f"benchmarks: {name} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
