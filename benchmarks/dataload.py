"""Data loading from JPEG folders: hvdtrain's loader vs Keras flow_from_directory, torch DataLoader and tf.data,
and hvdtrain's peak memory per rank as the dataset grows.

    python -m benchmarks.dataload [--repeats 3] [--cores 0,1] [--workers W] [--part throughput,rss]
                                  [--only PEER,...] [--sizes 1000 10000 50000] [--quick] [--report FILE]

Throughput: a generated folder of camera-sized JPEGs (500x375 and 375x500, 10 class folders, cached under
~/.cache/hvdtrain/bench-jpegs/) decoded, resized to 224x224 and augmented (flips, rotation 10 degrees, shifts 0.1,
zoom 0.1) in batches of 32. Each peer runs in its own process pinned to the same cores, with W workers (W parallel
calls for tf.data), after warm-up batches; interleaved repeats, median img/s, ratios hvdtrain / peer.
Peak RSS: one epoch of hvdtrain's image_folder and shards sources over 64x64 JPEG folders of each size, each
in a fresh process; the peak RSS (VmHWM) of the main process plus that of every child process.
Each part is its own section of the report (dataload-throughput, dataload-rss); from the command line without
--report they are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 32
SIZE = (224, 224)
SMALL = 64  # the RSS part's images: its question is the file list and the loader, not the pixels
ROTATION, SHIFT, ZOOM = 10.0, 0.1, 0.1
PEERS = {
    "hvdtrain": "hvdtrain loader (data.name=image_folder)",
    "keras": "Keras 3 ImageDataGenerator.flow_from_directory",
    "torch": "torch DataLoader + PIL ImageFolder equivalent (torchvision not installed)",
    "tfdata": "tf.data: image_dataset_from_directory + map(Keras layers) + prefetch",
}
SOURCES = ("image_folder", "shards")
CLASSES = 10


# ----------------------------------------------------------------------------------------------- data sets
def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hvdtrain" / "bench-jpegs"


def _picture(rng: np.random.Generator, width: int, height: int) -> Any:
    """A photo-like RGB image: a smooth colour field, a few blurred shapes, sensor-like noise."""
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(width // 10, width // 2)), y0 + int(rng.integers(height // 10,
                                                                                             height // 2))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    pixels += rng.normal(0, rng.uniform(3, 9), (height, width, 1)) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def picture_folder(name: str, n: int, size: Callable[[int], tuple[int, int]]) -> Path:
    """A cached folder `name` of n photo-like JPEGs (quality 90) in CLASSES class folders, image i of
    size(i) = (width, height). Generated once (into a temporary sibling, then renamed)."""
    folder = cache_root() / name
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(n)
    start = time.perf_counter()
    for c in range(CLASSES):
        (tmp / f"class{c:02d}").mkdir(parents=True)
    for i in range(n):
        _picture(rng, *size(i)).save(tmp / f"class{i % CLASSES:02d}" / f"img{i:06d}.jpg", quality=90)
    tmp.rename(folder)
    print(f"generated {folder} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return folder


def jpeg_folder(n: int, small: bool) -> Path:
    """n JPEGs: camera-sized (500x375 or 375x500, about 60 KB) or SMALLxSMALL (picture_folder)."""
    return picture_folder(f"{'small' if small else 'photos'}-{n}", n,
                          lambda i: (SMALL, SMALL) if small else ((500, 375) if i % 2 else (375, 500)))


def shard_folder(folder: Path) -> Path:
    """`python -m hvdtrain pack` of `folder` (which writes atomically), cached next to it and packed again
    whenever hvdtrain's packer or shard reader changes."""
    from hvdtrain.commands import pack
    from hvdtrain.data import shards

    stamp = max(int(Path(m.__file__ or "").stat().st_mtime) for m in (pack, shards))
    out = folder.with_name(f"{folder.name}-shards-{stamp}")
    if not out.is_dir():
        for old in folder.parent.glob(f"{folder.name}-shards-*"):
            shutil.rmtree(old, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hvdtrain", "pack", str(folder), str(out)], check=True,
                       capture_output=True, text=True)
        print(f"dataload: packed {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------- peak memory
def _hwm_mb(pid: int | str) -> float:
    """VmHWM (peak resident set) of a live process, MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Peak RSS of this process and of each of its child processes (sampled while they live)."""

    def __init__(self) -> None:
        self.children: dict[int, float] = {}

    def sample(self) -> None:
        import psutil

        for child in psutil.Process().children(recursive=True):
            self.children[child.pid] = max(self.children.get(child.pid, 0.0), _hwm_mb(child.pid))

    @staticmethod
    def cpu_seconds() -> dict[int, float]:
        """CPU time (user + system) so far of this process and of each live child, by pid."""
        import psutil

        found = {}
        for proc in (psutil.Process(), *psutil.Process().children(recursive=True)):
            try:
                times = proc.cpu_times()
                found[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return found

    def result(self) -> dict[str, float]:
        self.sample()
        main, workers = _hwm_mb("self"), sum(self.children.values())
        return {"main_mb": main, "workers_mb": workers, "total_mb": main + workers,
                "processes": 1 + len(self.children)}


# --------------------------------------------------------------------------------------------------- peers
def hvdtrain_config(source: str, path: Path, size: int, workers: int) -> Any:
    """The run config of hvdtrain's loader for these data, size and workers, with the peers' augmentation."""
    from hvdtrain.config import load_config

    return load_config(None, [
        f"data.name={source}", f"data.path={path}", f"data.image_size=[{size},{size}]", f"data.workers={workers}",
        "data.val_fraction=0", f"train.batch_size={BATCH}", "augment.horizontal_flip=true",
        f"augment.rotation_range={ROTATION}", f"augment.width_shift_range={SHIFT}",
        f"augment.height_shift_range={SHIFT}", f"augment.zoom_range={ZOOM}"])


def hvdtrain_batches(cfg: Any, watch: PeakRss | None = None, epochs: int | None = None) -> Generator[int, None, None]:
    """Batch sizes of hvdtrain's training loader (rank 0 of 1), epoch after epoch."""
    from hvdtrain.data import load_dataset
    from hvdtrain.data.pipeline import open_train_loader

    dataset = load_dataset(cfg.data, cfg.seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        with open_train_loader(cfg, dataset, rank=0, world_size=1, epoch=epoch) as loader:
            for i, (x, *_) in enumerate(loader):
                if watch is not None and i % 32 == 0:
                    watch.sample()
                yield len(x)
            if watch is not None:
                watch.sample()
        epoch += 1


def keras_batches(folder: Path, workers: int) -> Generator[int, None, None]:
    """Keras 3's legacy ImageDataGenerator.flow_from_directory, iterated as `next()` does (one thread)."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    gen = ImageDataGenerator(rotation_range=ROTATION, width_shift_range=SHIFT, height_shift_range=SHIFT,
                             zoom_range=ZOOM, horizontal_flip=True, rescale=1 / 255)
    flow = gen.flow_from_directory(str(folder), target_size=SIZE, batch_size=BATCH, class_mode="sparse", seed=0)
    while True:
        yield len(next(flow)[0])


def _affine(img: Any, rng: random.Random) -> Any:
    """A random rotation, shift and zoom about the centre, as torchvision's RandomAffine does on PIL images."""
    from PIL import Image

    angle = math.radians(rng.uniform(-ROTATION, ROTATION))
    scale = rng.uniform(1 - ZOOM, 1 + ZOOM)
    tx, ty = (rng.uniform(-SHIFT, SHIFT) * d for d in img.size)
    cx, cy = img.width / 2, img.height / 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # output (x, y) -> input: undo shift, rotation and scale about the centre
    ox, oy = cx + tx, cy + ty
    coeffs = (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy)
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.NEAREST)


def torch_batches(folder: Path, workers: int) -> Generator[int, None, None]:
    """torch DataLoader over a Dataset doing what torchvision's ImageFolder + Resize + RandomAffine +
    RandomHorizontalFlip + ToTensor do (PIL decode of the whole image, bilinear resize)."""
    import torch
    from PIL import Image

    class PilFolder(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, root: Path) -> None:
            classes = sorted(p.name for p in root.iterdir() if p.is_dir())
            self.samples = [(str(f), c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            path, label = self.samples[index]
            with Image.open(path) as img:
                img = img.convert("RGB")
            img = _affine(img.resize(SIZE[::-1], Image.Resampling.BILINEAR), random)  # type: ignore[arg-type]
            if random.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            return x.float().div(255), label

    loader = torch.utils.data.DataLoader(PilFolder(folder), batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    while True:
        for x, _ in loader:
            yield len(x)


def tfdata_batches(folder: Path, workers: int) -> Generator[int, None, None]:
    """tf.data: Keras' image_dataset_from_directory, then a parallel map of Keras' random layers, prefetch;
    the pipeline's thread pool and the map's parallel calls both W."""
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(str(folder), image_size=SIZE, batch_size=BATCH, seed=0,
                                                  label_mode="int", verbose=False)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                keras.layers.RandomRotation(ROTATION / 360, fill_mode="nearest"),
                                keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest"),
                                keras.layers.RandomZoom(ZOOM, fill_mode="nearest"),
                                keras.layers.Rescaling(1 / 255)])
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=workers)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    ds = ds.repeat().prefetch(tf.data.AUTOTUNE).with_options(options)
    for x, _ in ds:
        yield int(x.shape[0])


# ------------------------------------------------------------------------------------------ worker process
def _throughput(peer: str, folder: Path, workers: int, warmup: int, batches: int) -> dict[str, float]:
    """img/s of one peer over `batches` batches after `warmup`, and its peak RSS."""
    watch = PeakRss()
    stream: Generator[int, None, None]
    if peer == "hvdtrain":
        stream = hvdtrain_batches(hvdtrain_config("image_folder", folder, SIZE[0], workers), watch)
    else:
        stream = {"keras": keras_batches, "torch": torch_batches, "tfdata": tfdata_batches}[peer](folder, workers)
    for _ in range(warmup):
        next(stream)
    cpu_before, start, images = watch.cpu_seconds(), time.perf_counter(), 0
    for _ in range(batches):
        images += next(stream)
    rate = images / (time.perf_counter() - start)
    cpu = sum(t - cpu_before.get(pid, 0.0) for pid, t in watch.cpu_seconds().items())
    result = {"img_s": rate, "cpu_ms_per_img": cpu * 1000 / images, **watch.result()}
    stream.close()
    return result


def _epoch_rss(source: str, path: Path, workers: int) -> dict[str, float]:
    """One epoch of hvdtrain's loader over `path` (a folder, or its shards): images, seconds, peak RSS."""
    watch = PeakRss()
    start, images = time.perf_counter(), 0
    for n in hvdtrain_batches(hvdtrain_config(source, path, SMALL, workers), watch, epochs=1):
        images += n
    return {"images": images, "seconds": time.perf_counter() - start, **watch.result()}


def worker(task: dict[str, Any]) -> dict[str, float]:
    """Runs one measurement in this (fresh) process, pinned to task["cores"]."""
    os.sched_setaffinity(0, task["cores"])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if task["kind"] == "throughput":
        return _throughput(task["peer"], Path(task["folder"]), task["workers"], task["warmup"], task["batches"])
    return _epoch_rss(task["source"], Path(task["path"]), task["workers"])


def measure(task: dict[str, Any]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.dataload", "--worker", json.dumps(task)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"dataload worker {task} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------------------------- report
def _command(args: argparse.Namespace, part: str, only: str | None = None, sizes: bool = False) -> str:
    cmd = (f"python -m benchmarks.dataload --part {part} --repeats {args.repeats} --cores "
           f"{','.join(map(str, args.cores))} --workers {args.workers}")
    cmd += f" --only {only}" if only else ""
    cmd += f" --sizes {' '.join(map(str, args.sizes))}" if sizes else ""
    return cmd + (" --quick" if args.quick else "")


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _ratio(ours: float | None, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if ours else "-"


def throughput_section(args: argparse.Namespace, rates: dict[str, list[dict[str, float]]], folder: Path,
                       load: tuple[float, float]) -> str:
    med = {p: {k: statistics.median(r[k] for r in rates[p]) for k in ("img_s", "cpu_ms_per_img", "total_mb")}
           for p in rates}
    ours = med["hvdtrain"]["img_s"] if "hvdtrain" in med else None
    rows = [f"| {PEERS[p]} | {m['img_s']:,.0f} | {_ratio(ours, m['img_s'])} | "
            f"{m['cpu_ms_per_img']:.2f} | {m['total_mb']:,.0f} | `{_command(args, 'throughput', p)}` |"
            for p, m in med.items()]
    verdict = ""
    peers = [p for p in med if p != "hvdtrain"]
    if ours and peers:
        fastest = max(peers, key=lambda p: med[p]["img_s"])
        vs_peer = ours / med[fastest]["img_s"]
        parts = [f"fastest peer: {_met(vs_peer >= 1)}, {vs_peer:.2f}x ({fastest})"]
        if "keras" in med:
            vs_keras = ours / med["keras"]["img_s"]
            parts.append(f"5x flow_from_directory: {_met(vs_keras >= 5)}, {vs_keras:.1f}x")
        verdict = ("\n\nTarget (throughput >= fastest peer at equal cores and >= 5x flow_from_directory): "
                   + "; ".join(parts) + ".")
    sizes = [p.stat().st_size for p in folder.rglob("*.jpg")]
    return f"""## Data loading: throughput at 224x224

`{_command(args, 'throughput')}`: {len(sizes)} generated camera-sized JPEGs (500x375 and 375x500, median
{statistics.median(sizes) / 1024:.0f} KB, page cache warm) decoded, resized to 224x224, random flips, rotation
{ROTATION:g} degrees, shifts {SHIFT:g} and zoom {ZOOM:g}, batches of {BATCH}; each loader in its own process
pinned to cores {','.join(map(str, args.cores))} with W={args.workers} workers (tf.data: W parallel calls and a
W-thread pool; flow_from_directory has no workers: one thread, as `next()` runs it). {args.warmup} warm-up
batches, then {args.batches} timed; medians of {args.repeats} interleaved repeats. CPU ms / image: user + system
time of the process and its children over the timed batches, per image (what the machine's load does not
change much). Peak RSS: VmHWM of the main process plus each child, summed (shared pages counted in each).
Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} after. {machine_line()}.

| loader | img/s | hvdtrain / this | CPU ms / image | peak RSS (MB) | command |
|---|---|---|---|---|---|
{chr(10).join(rows)}{verdict}

How each loader does it: hvdtrain: W spawned worker processes each decode (Pillow; `draft` DCT scaling when
the image is at least twice the target), bilinear resize and augment whole batches (the native kernel, one
thread each) into shared memory. flow_from_directory: Pillow decode, its default nearest-neighbour resize,
SciPy's affine per image. torch: what torchvision's ImageFolder + Resize + RandomAffine + RandomHorizontalFlip +
ToTensor do on PIL images (whole-image decode, bilinear resize, nearest affine in uint8), written out here
since torchvision is not installed in this environment. tf.data: `tf.io.decode_image`, bilinear `tf.image.resize`, then
Keras' RandomFlip, RandomRotation, RandomTranslation and RandomZoom layers on whole batches."""


def rss_section(args: argparse.Namespace, runs: dict[tuple[str, int], list[dict[str, float]]]) -> str:
    rows: list[str] = []
    ratios: dict[str, float] = {}
    main_ratios: dict[str, float] = {}
    for source in args.sources:
        sizes = [n for n in args.sizes if (source, n) in runs]
        for n in sizes:
            med = {k: statistics.median(r[k] for r in runs[(source, n)]) for k in runs[(source, n)][0]}
            rows.append(f"| {source} | {n:,} | {med['images']:,.0f} | {med['seconds']:.1f} | {med['main_mb']:,.0f} "
                        f"| {med['workers_mb']:,.0f} ({med['processes'] - 1:.0f}) | {med['total_mb']:,.0f} | "
                        f"`{_command(args, 'rss', source, sizes=True)}` |")
        if len(sizes) > 1:
            first, last = (statistics.median(r["total_mb"] for r in runs[(source, n)]) for n in (sizes[0], sizes[-1]))
            main_first, main_last = (statistics.median(r["main_mb"] for r in runs[(source, n)])
                                     for n in (sizes[0], sizes[-1]))
            ratios[source] = last / first
            main_ratios[source] = main_last / main_first
    span = f"{args.sizes[0]:,} to {args.sizes[-1]:,}"
    verdict = "; ".join(f"{s}: {_met(r <= 1.10)}, {r:.3f} (main process alone "
                        f"{main_ratios[s]:.3f})" for s, r in ratios.items())
    return f"""## Data loading: peak RSS per rank vs dataset size

`{_command(args, 'rss', sizes=True)}`: one epoch (every image once, data.val_fraction=0; full batches,
the last partial one dropped as in training) of hvdtrain's training loader, rank 0 of 1, W={args.workers}
workers, batches of {BATCH}, the same augmentation, each size in a fresh process pinned to cores
{','.join(map(str, args.cores))}. The images are {SMALL}x{SMALL} JPEGs (data.image_size=[{SMALL},{SMALL}]): how
memory grows with the dataset depends on the file list and the loader, not on the pixels, and small files keep
generating {args.sizes[-1]:,} of them short. Shards are written by `python -m hvdtrain pack` (default shard
size). Peak RSS is VmHWM of the main process and of each child, summed (shared pages counted in each child);
the children are the W workers (started with `spawn`) and multiprocessing's resource tracker. Medians of
{args.repeats} repeat(s). {machine_line()}.

| source | images in folder | images read | epoch (s) | main peak RSS (MB) | children's peak RSS (MB) \
(processes) | total (MB) | command |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Target (peak RSS per rank flat, within 10% from {span}; the ratio of the totals): {verdict or '-'}."""


def machine_line() -> str:
    """The suite's machine line, plus the hvdtrain commit measured (and whether the tree had changes)."""
    from benchmarks.report import machine

    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "hvdtrain"], capture_output=True, text=True).stdout
    return f"{machine()}, hvdtrain {commit or 'unknown'}{' + local changes' if dirty.strip() else ''}"


def emit(name: str, body: str, report: Path | None, suite: bool) -> None:
    """Writes section `name` into --report; run by `python -m benchmarks` (suite), into its report as every
    section does (docs/benchmarks.md unless the suite has --report); else prints it."""
    from benchmarks.report import REPORT_ENV, update_section

    if report is not None:
        os.environ[REPORT_ENV] = str(report.resolve())
    if report is not None or suite:
        update_section(name, body)
    else:
        print(body)


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    from benchmarks.launch import section_parser

    parser = section_parser(__doc__)
    parser.add_argument("--cores", type=lambda s: [int(c) for c in s.split(",")],
                        default=sorted(os.sched_getaffinity(0)), help="cores every measurement is pinned to")
    parser.add_argument("--workers", type=int, help="loader workers W (default: one per core)")
    parser.add_argument("--part", default="throughput,rss", help="throughput, rss or both")
    parser.add_argument("--only", help=f"peers ({','.join(PEERS)}) or sources ({','.join(SOURCES)}) to run")
    parser.add_argument("--sizes", type=int, nargs="+", help="RSS part: folder sizes (default 1000 10000 50000)")
    parser.add_argument("--batches", type=int, help="timed batches per throughput measurement (default 60)")
    parser.add_argument("--report", type=Path, help="write the section here (default: print it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    suite = argv is not None  # the suite passes its arguments; the command line does not
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    args.workers = args.workers or len(args.cores)
    args.sizes = args.sizes or ([1000, 5000] if args.quick else [1000, 10000, 50000])
    args.batches = args.batches or (5 if args.quick else 60)
    args.warmup = 2 if args.quick else 5
    only = set(args.only.split(",")) if args.only else set(PEERS) | set(SOURCES)
    if only - set(PEERS) - set(SOURCES):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(PEERS) - set(SOURCES)))}; choose from "
                     f"{', '.join([*PEERS, *SOURCES])}")
    peers = [p for p in PEERS if p in only]
    args.sources = [s for s in SOURCES if s in only]
    parts = args.part.split(",")
    base = {"cores": args.cores, "workers": args.workers}
    if "throughput" in parts and peers:
        folder = jpeg_folder(BATCH * (args.warmup + args.batches + 2), small=False)
        rates: dict[str, list[dict[str, float]]] = {}
        load_before = os.getloadavg()[0]
        for rep in range(args.repeats):
            for peer in peers:
                task = {**base, "kind": "throughput", "peer": peer, "folder": str(folder), "warmup": args.warmup,
                        "batches": args.batches}
                rates.setdefault(peer, []).append(measure(task))
                found = rates[peer][-1]
                print(f"dataload: repeat {rep} {peer}: {found['img_s']:,.0f} img/s, {found['cpu_ms_per_img']:.2f} "
                      f"CPU ms/img, {found['total_mb']:,.0f} MB", file=sys.stderr, flush=True)
        emit("dataload-throughput", throughput_section(args, rates, folder, (load_before, os.getloadavg()[0])),
             args.report, suite)
    if "rss" in parts and args.sources:
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        folders = {n: jpeg_folder(n, small=True) for n in args.sizes}
        paths = {(s, n): shard_folder(folders[n]) if s == "shards" else folders[n]
                 for s in args.sources for n in args.sizes}
        for rep in range(args.repeats):
            for n in args.sizes:
                for source in args.sources:
                    task = {**base, "kind": "rss", "source": source, "path": str(paths[(source, n)])}
                    runs.setdefault((source, n), []).append(measure(task))
                    found = runs[(source, n)][-1]
                    print(f"dataload: repeat {rep} {source} {n}: {found['total_mb']:,.0f} MB "
                          f"({found['main_mb']:,.0f} main), {found['seconds']:.1f} s", file=sys.stderr, flush=True)
        emit("dataload-rss", rss_section(args, runs), args.report, suite)


if __name__ == "__main__":
    main()
