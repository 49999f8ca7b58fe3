"""Horovod allreduce bandwidth at np=2 (Gloo and MPI) next to two bounds measured in the same processes.

    python -m benchmarks.allreduce [--repeats 3] [--max-mib 256]

For float32 tensors of 4 KiB, 16 KiB, ... up to --max-mib, each launch (`horovodrun --gloo` or `--mpi`,
alternating over the repeats) times, size by size and interleaved:
- Horovod's in-place allreduce (`hvd.allreduce_`, op Average, as gradients are reduced), bus bandwidth
  busbw = size / time * 2(n-1)/n (NCCL's convention: what each link carries);
- an idealised shared-memory allreduce between the same processes: inputs and outputs stay in each
  process's private memory, as in Horovod; each copies its input into a shared segment, sums its 1/n of
  all inputs there, and copies the whole result out, with spin barriers on shared counters. This is the
  least memory traffic any allreduce between processes of one machine needs, so its busbw (same formula)
  is what the machine allows;
- memcpy bandwidth (numpy copyto between private buffers, all ranks at once), the machine's raw limit.

Medians over iterations and repeats; each (size, method) runs for about --seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import mmap
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.launch import horovodrun, run, section_parser
from benchmarks.report import machine, update_section

CONTROLLERS = ("gloo", "mpi")
LINE = 64  # bytes between barrier counters: one cache line each


def sizes_up_to(max_bytes: int) -> list[int]:
    """4 KiB, 16 KiB, ... (powers of 4) up to max_bytes."""
    out, size = [], 4096
    while size <= max_bytes:
        out.append(size)
        size *= 4
    return out


class SharedArena:
    """A file-backed shared mapping holding barrier counters, one input slot per rank and the result."""

    def __init__(self, path: Path, rank: int, ranks: int, max_bytes: int) -> None:
        self.rank, self.ranks, self.max_bytes = rank, ranks, max_bytes
        total = LINE * ranks + max_bytes * (ranks + 1)
        with open(path, "a+b") as f:
            f.truncate(total)
            self._map = mmap.mmap(f.fileno(), total)
        buf = np.frombuffer(self._map, dtype=np.uint8)
        self.counters = buf[:LINE * ranks].view(np.int64)[::LINE // 8]
        self.slots = [buf[LINE * ranks + i * max_bytes:LINE * ranks + (i + 1) * max_bytes].view(np.float32)
                      for i in range(ranks)]
        self.result = buf[LINE * ranks + ranks * max_bytes:].view(np.float32)
        self._epoch = 0

    def barrier(self) -> None:
        """Every rank has arrived once more. Each rank writes only its own counter (x86 stores are seen in
        order, so a counter seen raised means the writes before it are visible)."""
        self._epoch += 1
        self.counters[self.rank] = self._epoch
        while self.counters.min() < self._epoch:
            pass

    def allreduce(self, x: np.ndarray, out: np.ndarray) -> None:
        """out = sum of every rank's x: copy in, reduce this rank's chunk, copy out."""
        n = x.size
        np.copyto(self.slots[self.rank][:n], x)
        self.barrier()
        lo, hi = n * self.rank // self.ranks, n * (self.rank + 1) // self.ranks
        if self.ranks == 1:
            np.copyto(self.result[lo:hi], self.slots[0][lo:hi])
        else:
            np.add(self.slots[0][lo:hi], self.slots[1][lo:hi], out=self.result[lo:hi])
        for other in self.slots[2:]:
            np.add(self.result[lo:hi], other[lo:hi], out=self.result[lo:hi])
        self.barrier()
        np.copyto(out, self.result[:n])
        self.barrier()  # nobody writes the segment again before everyone has copied the result out

    def close(self) -> None:
        del self.counters, self.slots, self.result
        self._map.close()


def _iterations(op: Callable[[], Any], seconds: float) -> int:
    """How many runs of `op` take about `seconds` (3 to 1000), from a warm-up and three timed runs."""
    op()
    probe = statistics.median(_timed_once(op) for _ in range(3))
    return int(min(1000, max(3, seconds / max(probe, 1e-9))))


def worker(max_bytes: int, seconds: float, arena_dir: str, out: str) -> None:
    import horovod.torch as hvd
    import torch

    hvd.init()
    torch.set_num_threads(1)
    rank, ranks = hvd.rank(), hvd.size()
    arena = SharedArena(Path(arena_dir) / "arena", rank, ranks, max_bytes)
    hvd.barrier()
    results: dict[str, dict[int, float]] = {"horovod": {}, "shm": {}, "memcpy": {}}
    for size in sizes_up_to(max_bytes):
        count = size // 4
        tensor = torch.ones(count, dtype=torch.float32)
        x, y = np.ones(count, dtype=np.float32), np.empty(count, dtype=np.float32)
        horovod = functools.partial(hvd.allreduce_, tensor, op=hvd.Average, name=f"bench.{size}")
        # Every rank must run the same number of collectives: rank 0's count, broadcast.
        iters = int(hvd.broadcast_object(_iterations(horovod, seconds), root_rank=0))
        results["horovod"][size] = statistics.median(_timed_once(horovod) for _ in range(iters))
        hvd.barrier()
        arena.allreduce(x, y)  # warm-up
        times = [_timed_once(functools.partial(arena.allreduce, x, y)) for _ in range(iters)]
        results["shm"][size] = statistics.median(times)
        assert np.all(y == ranks), "the shared-memory allreduce summed wrongly"
        hvd.barrier()
        times = [_timed_once(functools.partial(np.copyto, y, x)) for _ in range(iters)]
        results["memcpy"][size] = statistics.median(times)
        hvd.barrier()
    arena.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"ranks": ranks, **results}) + "\n")
    hvd.shutdown()


def _timed_once(op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    op()
    return time.perf_counter() - start


def _arena_dir(max_bytes: int, ranks: int) -> str:
    """/dev/shm when it has room for the segment (a container's may be 64 MiB), else the temp dir."""
    need = max_bytes * (ranks + 2)
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > need:
        return tempfile.mkdtemp(dir=shm, prefix="hvdtrain-bench-")
    return tempfile.mkdtemp(prefix="hvdtrain-bench-")


def measure(repeats: int, max_bytes: int, seconds: float, np_: int = 2) -> dict[str, Any]:
    """Runs the launches; returns per controller and size the median times (seconds) of each method."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTROLLERS}
    for rep in range(repeats):
        for controller in CONTROLLERS:
            arena = _arena_dir(max_bytes, np_)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "allreduce.json"
                    run([*horovodrun(np_, controller=controller), sys.executable, "-m", "benchmarks.allreduce",
                         "--worker", str(max_bytes), str(seconds), arena, str(out)])
                    runs[controller].append(json.loads(out.read_text()))
            finally:
                shutil.rmtree(arena, ignore_errors=True)
            print(f"allreduce: repeat {rep} {controller} done", file=sys.stderr)
    sizes = sizes_up_to(max_bytes)
    med = {}
    for controller, results in runs.items():
        med[controller] = {method: {s: statistics.median(r[method][str(s)] for r in results) for s in sizes}
                           for method in ("horovod", "shm", "memcpy")}
    return {"ranks": np_, "sizes": sizes, "median_s": med}


def busbw(size: int, seconds: float, ranks: int) -> float:
    """GB/s each link carries (NCCL's bus bandwidth)."""
    return size / seconds * 2 * (ranks - 1) / ranks / 1e9


def _gbs(value: float) -> str:
    """GB/s with two decimals, or two significant digits below 0.1 (tiny sizes on a busy machine: "0.00" would
    hide a measured rate)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _human(size: int) -> str:
    return f"{size // 2**20} MiB" if size >= 2**20 else f"{size // 2**10} KiB"


def report(data: dict[str, Any], command: str, repeats: int) -> str:
    n, med = data["ranks"], data["median_s"]
    rows, verdict = [], []
    for s in data["sizes"]:
        gloo, mpi = (busbw(s, med[c]["horovod"][s], n) for c in CONTROLLERS)
        ideal = statistics.median([busbw(s, med[c]["shm"][s], n) for c in CONTROLLERS])
        copy = statistics.median([s / med[c]["memcpy"][s] / 1e9 for c in CONTROLLERS])
        rows.append(f"| {_human(s)} | {_gbs(gloo)} | {_gbs(mpi)} | {_gbs(ideal)} | {_gbs(copy)} | "
                    f"{gloo / ideal:.2f} | {mpi / ideal:.2f} |")
        if s >= 64 * 2**20:
            verdict.append((s, gloo / ideal, mpi / ideal))
    if verdict:
        worst = min(min(g, m) for _, g, m in verdict)
        target = (f"Target (busbw >= 0.5 of the idealised allreduce from 64 MiB): "
                  f"{'met' if worst >= 0.5 else 'not met'}, lowest ratio {worst:.2f}.")
    else:
        target = "No size of 64 MiB or more was measured: the 64 MiB+ target is not assessed in this run."
    return f"""## Allreduce bandwidth

`{command}`: np={n} on this machine, float32 tensors, Horovod's in-place allreduce (op Average) under
`horovodrun --gloo` and `--mpi`, {repeats} alternating launches, medians. busbw = size / time x 2(n-1)/n, in GB/s.
"ideal shm" is an allreduce through shared memory between the same two processes (copy in, each sums
its half, copy out; the least memory traffic possible between processes), "memcpy" one process copying a
buffer of that size while the other does too. {machine()}.

| size | Gloo busbw | MPI busbw | ideal shm busbw | memcpy GB/s | Gloo / ideal | MPI / ideal |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{target}

Horovod adds about a millisecond per collective below 1 MiB (its background thread negotiates every
tensor once per cycle, `horovod.cycle_time_ms`), which is why small sizes are far from the bound; fusion
hides it in training, where gradients go in one buffer. Gloo moves data over loopback TCP (copies through
the kernel's socket buffers), MPI through shared memory. Open MPI can beat the "ideal" here at large sizes:
its shared-memory transport reads the peer's buffer directly (single-copy CMA) and skips the copy into a
common segment this bound assumes, so for MPI the bound is a yardstick rather than a ceiling."""


def main(argv: list[str] | None = None) -> None:
    parser = section_parser(__doc__)
    parser.add_argument("--max-mib", type=float, default=256)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per (size, method) in each launch")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(int(args.worker[0]), float(args.worker[1]), args.worker[2], args.worker[3])
        return
    if args.quick:
        args.max_mib, args.seconds = 1 / 16, 0.02
    max_bytes = int(args.max_mib * 2**20)
    data = measure(args.repeats, max_bytes, args.seconds)
    command = f"python -m benchmarks.allreduce --repeats {args.repeats} " + (
        "--quick" if args.quick else f"--max-mib {args.max_mib:g} --seconds {args.seconds:g}")
    update_section("allreduce", report(data, command, args.repeats))


if __name__ == "__main__":
    main()
