"""Resident memory of training ranks over the steps of a real run: does a rank grow with the steps it takes, or
with the folder it reads?

    python -m benchmarks.trainmem [--steps 1000] [--sizes 4000 40000] [--backends torch,tensorflow]
                                  [--sources image_folder,shards] [--workers 0,1] [--image-size 224] [--quick]
                                  [--report FILE]

Each run is what a user runs: `horovodrun -np 2` training the built-in cnn (narrowed: MODEL) at --image-size over
a folder of 320x240 JPEGs in 10 class folders (generated once, cached beside the data-loading benchmark's) or its
tar shards, data.val_fraction=0.05, batch 16 a rank, SGD, for --steps optimizer steps a rank (several epochs, each
with its evaluation, where the folder is small; one epoch cut at --steps where it is large). A callback in every
rank (`RssProbe`, named by callbacks.user) samples the resident memory of the rank and, apart, of its data workers
every few steps and right after each evaluation. Reported per run: the slope of each rank's RSS over the steps
after the first 100 (least squares, MB per step; target < 0.05), the rank's peak (VmHWM) and the workers'.
Folders are read with every --workers count, shards with the last. The largest folder is run at the first backend
and source with the last worker count only; its peak is compared with the same run over the smallest folder
(target: within 10%).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.dataload import cache_root, emit, machine_line, picture_folder, shard_folder
from benchmarks.launch import horovodrun, run, section_parser

PROBE_DIR_ENV = "HVDTRAIN_RSS_PROBE_DIR"
EVERY_ENV = "HVDTRAIN_RSS_PROBE_EVERY"  # sample every this many steps (default 5)
WARMUP_STEPS = 100
SLOPE_TARGET = 0.05  # MB per step
PEAK_TARGET = 0.10
BATCH, NP = 16, 2
PHOTO = (320, 240)  # width, height
# The built-in cnn, narrower than its default (8 and 16 channels, a 32-unit head) so that 1,000 steps a rank at
# 224x224 take minutes on two cores; the allocation pattern (activations of every layer, per step) is the same.
MODEL = ("model.name=cnn", "model.channels=[8,16]", "model.hidden_units=[32]")


# ----------------------------------------------------------------------------------------------- sampling
def _status_mb(pid: int | str, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class RssProbe:
    """A callback (callbacks.user=[benchmarks.trainmem:RssProbe]) recording this rank's RSS and its data
    workers' every $HVDTRAIN_RSS_PROBE_EVERY steps and after each evaluation; written to
    $HVDTRAIN_RSS_PROBE_DIR/rank<r>.json with the peaks (VmHWM) of the rank and of its workers."""

    def __init__(self, cfg: Any) -> None:
        self.every = int(os.environ.get(EVERY_ENV, "5"))
        self.rows: list[tuple[int, float, float, str]] = []  # (step, rank MB, workers MB, when)
        self.workers_peak: dict[int, float] = {}
        self.step = 0

    def _sample(self, when: str) -> None:
        workers = _children(os.getpid())
        for pid in workers:
            self.workers_peak[pid] = max(self.workers_peak.get(pid, 0.0), _status_mb(pid, "VmHWM"))
        self.rows.append((self.step, _status_mb("self", "VmRSS"), sum(_status_mb(p, "VmRSS") for p in workers),
                          when))

    def on_train_begin(self, ctx: Any) -> None:
        self._sample("begin")

    def on_step_end(self, ctx: Any, step: int, loss: float) -> None:
        self.step = step
        if step % self.every == 0:
            self._sample("step")

    def on_epoch_end(self, ctx: Any, record: dict[str, Any]) -> None:
        self._sample("eval")

    def on_train_end(self, ctx: Any, summary: dict[str, Any]) -> None:
        self._sample("end")
        out = Path(os.environ[PROBE_DIR_ENV]) / f"rank{ctx.rank}.json"
        out.write_text(json.dumps({"rows": self.rows, "rank_peak_mb": _status_mb("self", "VmHWM"),
                                   "workers_peak_mb": sum(self.workers_peak.values()),
                                   "workers": len(self.workers_peak)}))


# ------------------------------------------------------------------------------------------------- data
def photo_folder(n: int) -> Path:
    """A cached folder of n 320x240 JPEGs in CLASSES class folders."""
    return picture_folder(f"photos320-{n}", n, lambda i: PHOTO)


# ---------------------------------------------------------------------------------------------- analysis
def slope_mb_per_step(rows: list[list[Any]], after: int = WARMUP_STEPS) -> float:
    """Least-squares slope of the rank's RSS over the steps after `after` (MB per step)."""
    pts = [(r[0], r[1]) for r in rows if r[0] > after]
    if len(pts) < 3:
        return float("nan")
    x, y = np.array(pts, dtype=np.float64).T
    return float(np.polyfit(x, y, 1)[0])


def train_overrides(source: str, path: Path, size: int, steps: int, images: int, workers: int,
                    run_dir: Path) -> list[str]:
    """The run: `steps` optimizer steps a rank over `images` images (5% held out)."""
    per_epoch = max(1, int(images * 0.95) // (BATCH * NP))
    epochs = math.ceil(steps / per_epoch)
    return [f"data.name={source}", f"data.path={path}", f"data.image_size=[{size},{size}]",
            "data.val_fraction=0.05", f"data.workers={workers}", f"train.batch_size={BATCH}",
            "optim.name=sgd", f"train.epochs={epochs}", f"train.max_steps_per_epoch={min(per_epoch, steps)}",
            "callbacks.user=[benchmarks.trainmem:RssProbe]",
            f"run.dir={run_dir}", "run.overwrite=true"]


def measure(backend: str, source: str, path: Path, images: int, size: int, steps: int, workers: int,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One horovodrun job; its ranks' samples, slopes and peaks."""
    with tempfile.TemporaryDirectory(prefix="trainmem-") as tmp:
        probe = Path(tmp) / "probe"
        probe.mkdir()
        cmd = [*horovodrun(NP), sys.executable, "-m", "hvdtrain", f"backend={backend}",
               *train_overrides(source, path, size, steps, images, workers, Path(tmp) / "run"), *extra]
        start = time.perf_counter()
        run(cmd, env={PROBE_DIR_ENV: str(probe)}, timeout=7200)
        seconds = time.perf_counter() - start
        ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in range(NP)]
        keep = cache_root().parent / "trainmem"  # the samples of the last run of each case, for plotting
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{backend}-{source}-{images}-w{workers}.json").write_text(json.dumps(ranks))
    for r in ranks:
        r["slope"] = slope_mb_per_step(r["rows"])
        r["workers_slope"] = slope_mb_per_step([[row[0], row[2]] for row in r["rows"]])
    return {"backend": backend, "source": source, "images": images, "workers": workers, "seconds": seconds,
            "steps": max(row[0] for row in ranks[0]["rows"]), "ranks": ranks}


# ------------------------------------------------------------------------------------------------ report
def _command(args: Any) -> str:
    parts = ["python -m benchmarks.trainmem", f"--steps {args.steps}", f"--sizes {' '.join(map(str, args.sizes))}",
             f"--backends {','.join(args.backends)}", f"--sources {','.join(args.sources)}",
             f"--workers {','.join(map(str, args.workers))}", f"--image-size {args.image_size}"]
    return " ".join(parts)


def section(args: Any, runs: list[dict[str, Any]]) -> str:
    def cells(values: list[float], form: str = ",.0f") -> str:
        return " / ".join(format(v, form) for v in values)

    rows = []
    for m in runs:
        ranks = m["ranks"]
        slopes = [r["slope"] for r in ranks]
        after = [next((row[1] for row in r["rows"] if row[0] >= WARMUP_STEPS), float("nan")) for r in ranks]
        rows.append(f"| {m['backend']} | {m['source']} | {m['images']:,} | {m['workers']} | {m['steps']} | "
                    f"{cells([r['rows'][0][1] for r in ranks])} | {cells(after)} | "
                    f"{cells([r['rows'][-1][1] for r in ranks])} | {cells(slopes, '+.4f')} | "
                    f"{cells([r['rank_peak_mb'] for r in ranks])} | {cells([r['workers_peak_mb'] for r in ranks])} | "
                    f"{m['seconds']:.0f} | {'yes' if all(s < SLOPE_TARGET for s in slopes) else '**no**'} |")
    verdict = ""
    for m in (m for m in runs if m["images"] == max(args.sizes) != min(args.sizes)):
        twin = next((o for o in runs if o["images"] == min(args.sizes) and
                     (o["backend"], o["source"], o["workers"]) == (m["backend"], m["source"], m["workers"])), None)
        if twin is None:
            continue
        small_peak = max(r["rank_peak_mb"] for r in twin["ranks"])
        big_peak = max(r["rank_peak_mb"] for r in m["ranks"])
        ratio = big_peak / small_peak
        met = "met" if abs(ratio - 1) < PEAK_TARGET else "**not met**"
        verdict += (f"\n\nPeak of a rank at {m['images']:,} vs {twin['images']:,} images ({m['backend']}, "
                    f"{m['source']}, {m['workers']} workers): {big_peak:,.0f} / {small_peak:,.0f} MB = {ratio:.3f} "
                    f"(target: within {PEAK_TARGET:.0%}: {met}).")
    head = (f"| backend | source | images | data.workers | steps a rank | RSS at start (MB) | after {WARMUP_STEPS} "
            "steps | at the end | slope (MB/step) | rank peak (MB) | workers' peak (MB) | run (s) | flat |")
    return f"""## Training memory per rank over steps

`{_command(args)}`: horovodrun -np {NP}, the cnn (`{' '.join(MODEL[1:])}`) at {args.image_size}x{args.image_size}
over 320x240 JPEGs (image_folder, or their tar shards), 5% held out for the evaluation after each epoch, batch
{BATCH} a rank, SGD.
Each rank's resident memory is sampled every 5 steps and after each evaluation by a callback (`RssProbe`); the
slope is the least-squares growth of a rank's RSS over the steps after the first {WARMUP_STEPS} (target: under
{SLOPE_TARGET} MB per step). Two numbers in a cell are rank 0 / rank 1. {machine_line()}.

{head}
{"|---" * head.count(" | ")}|---|
{chr(10).join(rows)}{verdict}"""


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__, repeats=1)
    parser.add_argument("--steps", type=int, help="optimizer steps a rank (default 1000)")
    parser.add_argument("--sizes", type=int, nargs="+", help="folder sizes (default 4000 40000)")
    parser.add_argument("--backends", default="torch,tensorflow")
    parser.add_argument("--sources", default="image_folder,shards")
    parser.add_argument("--workers", default="0,1", help="data.workers values (default 0,1)")
    parser.add_argument("--image-size", type=int, help="square training size (default 224)")
    parser.add_argument("--report", type=Path, help="write the section here (default: print it)")
    args = parser.parse_args(argv)
    suite = argv is not None
    args.steps = args.steps or (40 if args.quick else 1000)
    args.sizes = args.sizes or ([200] if args.quick else [4000, 40000])
    args.image_size = args.image_size or (32 if args.quick else 224)
    args.backends = args.backends.split(",")
    args.sources = args.sources.split(",")
    args.workers = [int(w) for w in args.workers.split(",")]
    small, big = min(args.sizes), max(args.sizes)
    folders = {n: photo_folder(n) for n in args.sizes}
    runs = []
    # Folders with every worker count (0: the loader thread; 1: a worker process), shards with the last.
    cases = [(b, s, w, small) for b in args.backends for s in args.sources
             for w in (args.workers if s == "image_folder" else args.workers[-1:])]
    if big != small:
        cases.append((args.backends[0], args.sources[0], args.workers[-1], big))
    for backend, source, workers, n in cases:
        path = shard_folder(folders[n]) if source == "shards" else folders[n]
        found = measure(backend, source, path, n, args.image_size, args.steps, workers, MODEL)
        runs.append(found)
        print(f"trainmem: {backend} {source} {n} images, {workers} workers: slopes "
              f"{[round(r['slope'], 4) for r in found['ranks']]} MB/step, peaks "
              f"{[round(r['rank_peak_mb']) for r in found['ranks']]} MB, {found['seconds']:.0f} s",
              file=sys.stderr, flush=True)
    emit("trainmem", section(args, runs), args.report, suite)


if __name__ == "__main__":
    main()
