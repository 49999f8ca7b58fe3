"""Augmentation throughput: Keras ImageDataGenerator vs kornia's RandomAffine vs hvdtrain's two kernels.

    python -m benchmarks.augment [--repeats 3] [--sizes 32 224] [--quick]

Batches of 128 float32 RGB images, the same parameter ranges for all (rotation 20 degrees, shifts 0.1,
shear 10 degrees, zoom 0.1, horizontal flips, nearest fill), one process each (hvdtrain's rows: the native
kernel, then each framework kernel): every measurement runs in
a fresh worker process (torch and TensorFlow never share one), interleaved over the repeats; --quick runs
one worker process per framework instead. Timed: drawing the parameters and transforming the batch, after
two warm-up batches. Reports median images/s and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

IMPLS = ("keras", "kornia", "hvdtrain-native", "hvdtrain-native-1thread", "hvdtrain-torch", "hvdtrain-tensorflow")
ON_TENSORFLOW = ("keras", "hvdtrain-tensorflow")  # the others import torch
BATCH = 128
RANGES = {"rotation_range": 20.0, "width_shift_range": 0.1, "height_shift_range": 0.1, "shear_range": 10.0,
          "zoom_range": 0.1, "horizontal_flip": True, "fill_mode": "nearest"}


def _batches_for(size: int) -> int:
    return 12 if size <= 64 else 3


def worker(impl: str, size: int) -> float:
    """Images per second of one implementation at one image size."""
    rng = np.random.default_rng(0)
    images = rng.random((BATCH, size, size, 3), dtype=np.float32)
    if impl == "keras":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        from tf_keras.preprocessing.image import ImageDataGenerator

        flow = ImageDataGenerator(**RANGES).flow(images, batch_size=BATCH, shuffle=False)
        step = lambda: next(flow)  # noqa: E731
    elif impl == "kornia":
        import kornia.augmentation as K
        import torch

        aug = torch.nn.Sequential(
            K.RandomAffine(degrees=20.0, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10.0,
                           padding_mode="border", p=1.0),
            K.RandomHorizontalFlip(p=0.5))
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        step = lambda: aug(tensor)  # noqa: E731
    else:
        if impl == "hvdtrain-native-1thread":  # what one core does: Keras' ImageDataGenerator uses one
            os.environ["HVDTRAIN_AUGMENT_THREADS"] = "1"
        from hvdtrain.augment import sample_transforms
        from hvdtrain.config import AugmentConfig

        if impl == "hvdtrain-tensorflow":
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
            from tf_backend.augment import apply_transforms
        else:
            from torch_backend.augment import apply_transforms
        cfg = AugmentConfig(**RANGES, kernel="native" if impl.startswith("hvdtrain-native") else "framework")
        step = lambda: apply_transforms(images, sample_transforms(cfg, BATCH, images.shape[1:], rng), cfg)  # noqa: E731
    for _ in range(2):
        step()
    count = _batches_for(size)
    start = time.perf_counter()
    for _ in range(count):
        step()
    return count * BATCH / (time.perf_counter() - start)


def measure(impls: list[str], size: int) -> list[float]:
    """`worker` for each implementation in turn in this process, each in the environment the process had."""
    rates = []
    for impl in impls:
        env = dict(os.environ)
        rates.append(worker(impl, size))
        os.environ.clear()
        os.environ.update(env)
    return rates


def main(argv: list[str] | None = None) -> None:
    from benchmarks.launch import section_parser
    from benchmarks.report import machine, update_section

    parser = section_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--worker", nargs=2, metavar=("IMPL[,IMPL...]", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0].split(","), int(args.worker[1]))))
        return
    if args.quick:
        args.sizes = [16]
        groups = [[i for i in IMPLS if (i in ON_TENSORFLOW) == tf] for tf in (True, False)]
    else:
        groups = [[impl] for impl in IMPLS]
    rates: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        for size in args.sizes:
            for group in groups:
                proc = subprocess.run([sys.executable, "-m", "benchmarks.augment", "--worker", ",".join(group),
                                       str(size)], capture_output=True, text=True, check=True)
                for impl, rate in zip(group, json.loads(proc.stdout.strip().splitlines()[-1]), strict=True):
                    rates.setdefault((impl, size), []).append(rate)
                    print(f"repeat {rep} {impl} {size}: {rate:,.0f} img/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = []
    for impl in IMPLS:
        cells = []
        for size in args.sizes:
            rate = med[(impl, size)]
            cells.append(f"{rate:,.0f} | {rate / med[('keras', size)]:.1f}x | {rate / med[('kornia', size)]:.2f}x")
        rows.append(f"| {impl} | " + " | ".join(cells) + " |")
    big = max(args.sizes)
    keras_x, kornia_x = (med[("hvdtrain-native", big)] / med[(ref, big)] for ref in ("keras", "kornia"))
    verdict = (f"{'met' if keras_x >= 10 and kornia_x >= 1 else 'not met'} at {big}x{big}, "
               f"{keras_x:.1f}x Keras and {kornia_x:.2f}x kornia")
    head = " | ".join(f"{s}x{s} img/s | vs Keras | vs kornia" for s in args.sizes)
    command = f"python -m benchmarks.augment --repeats {args.repeats} --sizes {' '.join(map(str, args.sizes))}"
    command += " --quick" if args.quick else ""
    processes = "one process per framework" if args.quick else "each measurement in a fresh single process"
    update_section("augment", f"""## Augmentation throughput

`{command}`: batches of {BATCH} float32 RGB images; rotation 20, shifts 0.1, shear 10, zoom 0.1,
horizontal flip, nearest fill; {processes}, {args.repeats} interleaved
repeats, medians. {machine()}.

| implementation | {head} |
|{'---|' * (1 + 3 * len(args.sizes))}
{chr(10).join(rows)}

Keras is tf_keras' `ImageDataGenerator.flow` (SciPy per image and channel); kornia is
`RandomAffine` + `RandomHorizontalFlip` (bilinear `grid_sample`, border padding). hvdtrain-native is the
fused C++ kernel both backends use for numpy batches (`augment.kernel: auto`, the default, or `native`)
on all usable cores ({os.cpu_count()} here), hvdtrain-native-1thread the same on one core (Keras works on
one; kornia and the framework kernels use the framework's threads); hvdtrain-torch and
hvdtrain-tensorflow are the framework kernels (`augment.kernel: framework`, also used for tensors on a
device). All of hvdtrain's reproduce Keras' pixels (tests/unit/augment/test_augment.py), which kornia does not.
Target (native >= 10x Keras at 224x224 and not slower than kornia): {verdict}.""")


if __name__ == "__main__":
    main()
