"""Scaling on this machine: efficiency = X(np=2) / (2 X(np=1)), one thread per rank, for a compute-heavy
CNN, with `python -m hvdtrain bench` (synthetic data, the trainer's own step).

    python -m benchmarks.scaling [--repeats 3] [--quick]

X is the total img/s of the job. One thread per rank keeps np=1 from using the second core, so the
efficiency shows what data parallelism costs (allreduce, waiting for the slower rank), not how well the
framework uses two threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.launch import horovodrun, run
from benchmarks.report import machine, update_section

WORKLOAD = ("model.name=resnet", "model.depth=14", "data.synthetic_shape=[32,32,3]", "train.batch_size=32",
            "train.threads_per_rank=1")
QUICK = ("model.depth=8", "model.width_multiplier=0.25", "data.synthetic_shape=[8,8,3]", "train.batch_size=8")
BENCH = ("--warmup-batches", "3", "--batches-per-iter", "5", "--iters", "5")
QUICK_BENCH = ("--warmup-batches", "1", "--batches-per-iter", "1", "--iters", "2")


def bench(backend: str, np_: int, overrides: tuple[str, ...], bench_args: tuple[str, ...], tmp: Path) -> dict:
    out = tmp / f"{backend}-{np_}.json"
    run([*horovodrun(np_), sys.executable, "-m", "hvdtrain", "bench", *bench_args, "--json", str(out),
         *overrides, f"backend={backend}"])
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the runner works")
    args = parser.parse_args(argv)
    overrides = WORKLOAD + (QUICK if args.quick else ())
    bench_args = QUICK_BENCH if args.quick else BENCH
    totals: dict[tuple[str, int], list[float]] = {}
    params: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for backend in ("torch", "tensorflow"):
                for np_ in (1, 2):
                    result = bench(backend, np_, overrides, bench_args, Path(tmp))
                    totals.setdefault((backend, np_), []).append(result["img_per_s_total"])
                    params[backend] = result["num_parameters"]
                    print(f"scaling: repeat {rep} {backend} np={np_}: {result['img_per_s_total']:.1f} img/s",
                          file=sys.stderr)
    rows, worst = [], 1.0
    for backend in ("torch", "tensorflow"):
        one, two = (statistics.median(totals[(backend, n)]) for n in (1, 2))
        efficiency = two / (2 * one)
        worst = min(worst, efficiency)
        rows.append(f"| {backend} | {params[backend]:,} | {one:,.1f} | {two:,.1f} | {efficiency:.3f} |")
    command = f"python -m benchmarks.scaling --repeats {args.repeats}" + (" --quick" if args.quick else "")
    update_section("scaling", f"""## Scaling on this machine

`{command}`: `horovodrun -np N python -m hvdtrain bench {' '.join(bench_args)}` with {' '.join(overrides)};
one thread per rank; X = total img/s; medians over {args.repeats} interleaved repeats. {machine()}.

| backend | parameters | X(np=1) img/s | X(np=2) img/s | efficiency X(2) / 2 X(1) |
|---|---|---|---|---|
{chr(10).join(rows)}

Target (efficiency >= 0.9): {'met' if worst >= 0.9 else 'not met'}, lowest {worst:.3f}.""")


if __name__ == "__main__":
    main()
