"""Torch vs TensorFlow backend on the same config under `horovodrun -np 2`, interleaved repeats.

    python -m benchmarks.backends [--repeats 3] [--config configs/digits.yaml] [--np 2]

Reports, per backend, the median over repeats of the median epoch time (first epoch excluded: it holds
TensorFlow's tracing), samples/s, final validation accuracy, and the torch/TF ratio.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.launch import section_parser
from benchmarks.report import machine, update_section

BACKENDS = ("torch", "tensorflow")
QUICK = ("train.epochs=2", "train.max_steps_per_epoch=3")  # --quick: checks the runner, measures nothing
_REUSABLE: dict[tuple[str, str, int, tuple[str, ...]], dict] = {}  # run_once(reuse=True)'s results


def run_once(backend: str, config: str, np_: int, run_dir: Path, overrides: tuple[str, ...] = (), *,
             reuse: bool = False) -> dict:
    """One `horovodrun` training run; medians over its epochs after the first. With `reuse` (--quick, whose
    numbers mean nothing), a run with the same arguments made earlier in this process is not launched
    again: under `python -m benchmarks --quick` this section takes the policy section's fp32 runs."""
    key = (backend, config, np_, overrides)
    if reuse and key in _REUSABLE:
        return _REUSABLE[key]
    horovodrun = Path(sys.executable).parent / "horovodrun"
    cmd = [str(horovodrun), "-np", str(np_), "-H", f"localhost:{np_}", sys.executable, "-m", "hvdtrain",
           "--config", config, f"backend={backend}", "run.progress=off", f"run.dir={run_dir}", *overrides]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = epochs[1:] or epochs
    result = {"epoch_s": statistics.median(e["epoch_time_s"] for e in later),
              "samples_s": statistics.median(e["samples_per_s"] for e in later),
              "val_acc": epochs[-1]["val_accuracy"]}
    if reuse:
        _REUSABLE[key] = result
    return result


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__)
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--np", type=int, default=2, dest="np_")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else ()
    results: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for backend in BACKENDS:  # interleaved, so drifts in machine load hit both alike
                results[backend].append(run_once(backend, args.config, args.np_, Path(tmp) / f"{backend}{i}",
                                                    quick, reuse=args.quick))
                print(backend, i, results[backend][-1], file=sys.stderr)
    med = {b: {k: statistics.median(r[k] for r in results[b]) for k in results[b][0]} for b in BACKENDS}
    command = (f"python -m benchmarks.backends --repeats {args.repeats} --config {args.config} --np {args.np_}"
               + (" --quick" if args.quick else ""))
    rows = "\n".join(f"| {b} | {med[b]['epoch_s'] * 1000:.0f} | {med[b]['samples_s']:,.0f} | "
                     f"{med[b]['val_acc']:.4f} |" for b in BACKENDS)
    ratio = med["tensorflow"]["epoch_s"] / med["torch"]["epoch_s"]
    update_section("backends", f"""## Backends side by side

`{command}`: `horovodrun -np {args.np_}`, {args.config}, {args.repeats} interleaved repeats; medians of the
per-epoch medians, epoch 1 excluded (TensorFlow traces its step then). {machine()}.

| backend | epoch time (ms) | samples/s (all ranks) | final val_accuracy |
|---|---|---|---|
{rows}

Epoch time ratio tensorflow / torch: **{ratio:.2f}**.""")


if __name__ == "__main__":
    main()
