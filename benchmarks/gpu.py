"""GPU targets side by side (issue 15), on a machine with an NVIDIA GPU: ResNet-50 synthetic img/s in fp32
and bf16 on both backends (`hvdtrain bench`), hvdtrain's trainer against the hand-written Horovod loop on
the same GPU, the trainer with train.compile (issue 26) against itself eager, and the data wait with augmentation
on the GPU.

    python -m benchmarks.gpu [--repeats 1] [--np 1] [--backends torch,tensorflow] [--quick]

Targets: bf16 >= 2x fp32 img/s; hvdtrain / hand-written <= 1.03; data wait < 2% of step time.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.launch import horovodrun, run, section_parser
from benchmarks.overhead import handwritten, trainer
from benchmarks.report import machine, update_section

RESNET50 = ("model.name=resnet50", "data.name=synthetic", "data.synthetic_shape=[224,224,3]",
            "data.num_classes=1000", "train.batch_size=64")
TRAIN = (*RESNET50, "data.synthetic_samples=2048", "data.val_fraction=0.0625", "train.epochs=3",
         "train.max_steps_per_epoch=20", "optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9")
AUGMENT = ("augment.rotation_range=15", "augment.width_shift_range=0.1", "augment.height_shift_range=0.1",
           "augment.zoom_range=0.1", "augment.horizontal_flip=true", "augment.device=gpu")
HEAD = ("| backend | fp32 img/s | bf16 img/s | bf16 / fp32 (target >= 2) | trainer / hand-written (target <= 1.03) "
        "| compiled / eager speed-up (train.compile) | data wait (target < 2%) |\n|---|---|---|---|---|---|---|")
QUICK = ("model.name=resnet", "model.depth=8", "data.synthetic_shape=[32,32,3]", "data.num_classes=10",
         "data.synthetic_samples=512", "train.batch_size=32", "train.max_steps_per_epoch=4")


def gpus() -> int:
    """NVIDIA GPUs nvidia-smi lists (0 without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines()) if proc.returncode == 0 else 0


def bench(backend: str, precision: str, np_: int, overrides: tuple[str, ...], tmp: Path) -> float:
    """Total img/s of `hvdtrain bench` (Horovod's synthetic benchmark) with this precision."""
    out = tmp / f"bench-{backend}-{precision}.json"
    run([*horovodrun(np_), sys.executable, "-m", "hvdtrain", "bench", "--warmup-batches", "5",
         "--batches-per-iter", "10", "--iters", "5", "--json", str(out), f"backend={backend}",
         f"policy.precision={precision}", *overrides])
    return float(json.loads(out.read_text())["img_per_s_total"])


def data_wait(backend: str, np_: int, overrides: tuple[str, ...], tmp: Path) -> float:
    """Data wait as a fraction of step time (run.profile) with augmentation on the GPU."""
    run_dir = tmp / f"augment-{backend}"
    run([*horovodrun(np_), sys.executable, "-m", "hvdtrain", "--profile", f"backend={backend}", *overrides,
         *AUGMENT, "run.progress=off", f"run.dir={run_dir}", "run.overwrite=true"])
    return float(json.loads((run_dir / "summary.json").read_text())["profile"]["data_wait_fraction"])


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__, repeats=1)
    parser.add_argument("--np", type=int, default=1, dest="np_")
    parser.add_argument("--backends", default="torch,tensorflow",
                        help="comma-separated (the offline GPU check: torch, the lent machines have no TensorFlow)")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    if not set(backends) <= {"torch", "tensorflow"} or not backends:
        parser.error(f"--backends {args.backends}: choose from torch,tensorflow")
    if gpus() == 0:
        sys.exit("benchmarks.gpu: no NVIDIA GPU visible (nvidia-smi lists none): run it on a GPU machine")
    train = TRAIN + (QUICK if args.quick else ())
    synthetic = RESNET50 + (QUICK if args.quick else ())
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for rep in range(args.repeats):
            for backend in backends:
                jobs = {"fp32": functools.partial(bench, backend, "fp32", args.np_, synthetic, tmp),
                        "bf16": functools.partial(bench, backend, "bf16", args.np_, synthetic, tmp),
                        "trainer": functools.partial(trainer, backend, args.np_, train, tmp),
                        "handwritten": functools.partial(handwritten, f"{backend}-horovod", args.np_, train, tmp),
                        "compiled": functools.partial(trainer, backend, args.np_, (*train, "train.compile=true"),
                                                      tmp),
                        "data_wait": functools.partial(data_wait, backend, args.np_, train, tmp)}
                for name, job in jobs.items():
                    results.setdefault((backend, name), []).append(job())
                    print(f"gpu: repeat {rep} {backend} {name}: {results[(backend, name)][-1]:.4g}", file=sys.stderr)
    med = {key: statistics.median(values) for key, values in results.items()}
    for backend in backends:
        fp32, bf16 = med[(backend, "fp32")], med[(backend, "bf16")]
        ratio = med[(backend, "trainer")] / med[(backend, "handwritten")]
        wait = med[(backend, "data_wait")]
        speedup = med[(backend, "trainer")] / med[(backend, "compiled")]
        rows.append(f"| {backend} | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}x | {ratio:.3f} | {speedup:.2f}x | "
                    f"{wait:.1%} |")
    command = (f"python -m benchmarks.gpu --repeats {args.repeats} --np {args.np_}"
               + (f" --backends {args.backends}" if backends != ["torch", "tensorflow"] else "")
               + (" --quick" if args.quick else ""))
    update_section("gpu", f"""## GPU: ResNet-50

`{command}`: `horovodrun -np {args.np_}` on {gpus()} visible GPU(s). img/s: `hvdtrain bench` on ResNet-50
({' '.join(synthetic)}), total over ranks. Trainer / hand-written: seconds per epoch of `python -m hvdtrain` against
benchmarks/handwritten.py's Horovod loop on the same GPU ({' '.join(train)}), epochs after the first; compiled /
eager: the same trainer run with train.compile=true (epochs after the first: compiling is in the first). Data wait:
`--profile` with augmentation on the GPU ({' '.join(AUGMENT)}). Medians over {args.repeats} repeat(s). {machine()}.

{HEAD}
{chr(10).join(rows)}""")


if __name__ == "__main__":
    main()
