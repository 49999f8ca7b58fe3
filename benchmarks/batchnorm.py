"""What model.sync_batchnorm costs: step time with and without it under `horovodrun -np 2`, both backends,
interleaved repeats.

    python -m benchmarks.batchnorm [--repeats 3] [--np 2]

A ResNet-20 (19 BatchNorm layers) on 32x32x3 synthetic images, batch 32 per rank; reports the median over
repeats of the median epoch time (epoch 1 excluded: it holds TensorFlow's tracing) and the ratio
sync / plain per backend.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.backends import run_once
from benchmarks.launch import section_parser
from benchmarks.report import machine, update_section

BACKENDS = ("torch", "tensorflow")
CONFIG = ("data.name=synthetic", "data.synthetic_samples=2048", "data.synthetic_shape=[32,32,3]",
          "data.val_fraction=0.0625", "model.name=resnet", "model.depth=20", "train.batch_size=32",
          "train.epochs=3")
QUICK = ("train.epochs=2", "train.max_steps_per_epoch=3")  # --quick: checks the runner, measures nothing


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__)
    parser.add_argument("--np", type=int, default=2, dest="np_")
    args = parser.parse_args(argv)
    extra = QUICK if args.quick else ()
    variants = [(b, sync) for b in BACKENDS for sync in (False, True)]
    results: dict[tuple[str, bool], list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for backend, sync in variants:  # interleaved, so drifts in machine load hit all alike
                overrides = (*CONFIG, *extra, f"model.sync_batchnorm={str(sync).lower()}")
                result = run_once(backend, "configs/digits.yaml", args.np_, Path(tmp) / f"{backend}{sync}{i}",
                                  overrides)
                results[(backend, sync)].append(result)
                print(backend, sync, i, result, file=sys.stderr)
    epoch = {v: statistics.median(r["epoch_s"] for r in results[v]) for v in variants}
    command = f"python -m benchmarks.batchnorm --repeats {args.repeats} --np {args.np_}" + \
        (" --quick" if args.quick else "")
    rows = "\n".join(f"| {b} | {epoch[(b, False)] * 1000:.0f} | {epoch[(b, True)] * 1000:.0f} | "
                     f"**{epoch[(b, True)] / epoch[(b, False)]:.2f}** |" for b in BACKENDS)
    update_section("batchnorm", f"""## SyncBatchNorm's cost

`{command}`: `horovodrun -np {args.np_}`, ResNet-20 (19 BatchNorm layers) on 32x32x3 synthetic images, batch 32
per rank, {args.repeats} interleaved repeats; medians of the per-epoch medians, epoch 1 excluded. {machine()}.
With model.sync_batchnorm every BatchNorm layer of a training step makes three allreduces forward (count,
sums, centred squares) and their gradients backward.

| backend | epoch (ms), plain BatchNorm | epoch (ms), model.sync_batchnorm=true | ratio |
|---|---|---|---|
{rows}""")


if __name__ == "__main__":
    main()
