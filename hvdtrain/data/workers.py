"""Data worker processes: read, decode and augment batches outside the training process (data.workers).

A pool belongs to one rank and lives for the run. Its workers start with `spawn` (a fork of a process that
runs Horovod, MPI and a framework is not safe) and import numpy, Pillow and the augmentation kernel only,
never torch or TensorFlow. Each receives the run's sources once; then each task names a source, a batch
index, its sample indices and the transform. Batch b of a pass goes to worker b mod W, so the samples and
augmentation of every batch depend only on (seed, rank, epoch, batch), never on the number of workers.

A worker writes the batch's arrays into one of its shared-memory slots and sends their layout (and any
small extras, such as device-augmentation parameters) through a queue; the loader copies the arrays out
and frees the slot. A worker that dies is an error naming it and its exit (signal); one that delivers
nothing for data.worker_timeout_s is an error too; a worker whose parent died exits by itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from hvdtrain.data.source import SampleError, Source, read_skipping
from hvdtrain.errors import DataError

_POLL_S = 0.1


@dataclass(frozen=True)
class Task:
    """One batch for a worker to prepare into `slot`."""

    pass_id: int
    batch: int
    source: str
    indices: np.ndarray
    transform: Callable[[np.ndarray, np.ndarray, int], tuple[Any, ...]] | None
    skip_errors: bool
    slot: int


@dataclass(frozen=True)
class Prepared:
    """What a worker sends back: the arrays' layouts in the slot, the extras, the skipped samples, or an error."""

    pass_id: int
    batch: int
    worker: int
    slot: int
    arrays: list[tuple[str, tuple[int, ...], int]]  # dtype, shape, byte offset in the slot
    extras: tuple[Any, ...] = ()
    skipped: tuple[str, ...] = ()
    error: tuple[str, str, str] | None = None  # ("sample" | "data" | "crash", message, sample)


def prepare_batch(source: Source, task_indices: np.ndarray, transform: Any, batch: int,
                  skip_errors: bool) -> tuple[tuple[Any, ...], list[str]]:
    """Reads (skipping unreadable samples when asked) and transforms one batch: (arrays and extras, skipped)."""
    if skip_errors:
        x, y, skipped = read_skipping(source, task_indices)
        if len(y) == 0:
            raise DataError(f"every sample of a batch was unreadable (the first: {skipped[0]}): fix the data; "
                            "data.on_error=skip leaves out single samples, not whole batches")
    else:
        (x, y), skipped = source.read(task_indices), []
    item = (x, y) if transform is None else transform(x, y, batch)
    return item, skipped


def _worker_main(worker: int, sources_blob: bytes, tasks: Any, results: Any, slot_names: list[str],
                 parent: int) -> None:
    """A worker's loop: prepare tasks until told to stop (None) or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the training process, which stops us
    os.environ["HVDTRAIN_AUGMENT_THREADS"] = "1"  # W workers already use W cores
    slots = [shared_memory.SharedMemory(name=n) for n in slot_names]
    sources: Mapping[str, Source] = pickle.loads(sources_blob)
    try:
        while True:
            try:
                task: Task | None = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if task is None:
                return
            results.put(_run(worker, sources, task, slots[task.slot]))
    finally:
        for slot in slots:
            slot.close()


def _run(worker: int, sources: Mapping[str, Source], task: Task, slot: shared_memory.SharedMemory) -> Prepared:
    def failed(kind: str, message: str, sample: str = "") -> Prepared:
        return Prepared(task.pass_id, task.batch, worker, task.slot, [], error=(kind, message, sample))

    try:
        item, skipped = prepare_batch(sources[task.source], task.indices, task.transform, task.batch,
                                      task.skip_errors)
    except SampleError as exc:
        return failed("sample", str(exc), exc.what)
    except DataError as exc:
        return failed("data", str(exc))
    except Exception:
        return failed("crash", traceback.format_exc())
    arrays, offset = [], 0
    for array in item[:2]:
        array = np.ascontiguousarray(array)
        if offset + array.nbytes > slot.size:
            return failed("crash", f"a batch of {offset + array.nbytes} bytes does not fit a slot of {slot.size}")
        np.ndarray(array.shape, array.dtype, buffer=slot.buf, offset=offset)[...] = array
        arrays.append((array.dtype.str, array.shape, offset))
        offset += -(-array.nbytes // 64) * 64
    return Prepared(task.pass_id, task.batch, worker, task.slot, arrays, tuple(item[2:]), tuple(skipped))


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Starts workers without re-running the parent's main script: `spawn` would import it again in every worker
    (a script without an `if __name__ == "__main__"` guard would then start a second training), and workers need
    nothing from it (their target and everything they unpickle live in importable modules)."""
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class WorkerPool:
    """`workers` processes of one rank, each with `slots` shared-memory slots of `slot_bytes` bytes."""

    def __init__(self, sources: Mapping[str, Source], workers: int, slot_bytes: int, slots: int = 2,
                 timeout_s: float = 300.0) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.workers, self.slots_per_worker, self.timeout_s = workers, slots, timeout_s
        ctx = multiprocessing.get_context("spawn")
        self._results: Any = ctx.Queue()
        self._tasks: list[Any] = [ctx.Queue() for _ in range(workers)]
        self._shm = [[shared_memory.SharedMemory(create=True, size=max(slot_bytes, 64)) for _ in range(slots)]
                     for _ in range(workers)]
        self._free = [list(range(slots)) for _ in range(workers)]
        self._pass_id = 0
        blob = pickle.dumps(dict(sources))
        self._procs = [ctx.Process(target=_worker_main, name=f"hvdtrain-data-{w}", daemon=True,
                                   args=(w, blob, self._tasks[w], self._results, [s.name for s in self._shm[w]],
                                         os.getpid()))
                       for w in range(workers)]
        with _main_module_hidden():
            for proc in self._procs:
                proc.start()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid or 0 for p in self._procs]

    def new_pass(self) -> int:
        """A new pass id: results of earlier passes still in flight are dropped when they arrive."""
        self._pass_id += 1
        return self._pass_id

    def has_free_slot(self, worker: int) -> bool:
        return bool(self._free[worker])

    def submit(self, pass_id: int, batch: int, source: str, indices: np.ndarray, transform: Any,
               skip_errors: bool) -> None:
        """Sends batch `batch` to worker batch mod W (which must have a free slot)."""
        worker = batch % self.workers
        slot = self._free[worker].pop()
        self._tasks[worker].put(Task(pass_id, batch, source, np.asarray(indices), transform, skip_errors, slot))

    def receive(self, waiting_for: int, since: float) -> Prepared:
        """The next result (of any pass: the caller drops those of earlier passes with `release`); raises when
        a worker died, or when batch `waiting_for`, awaited since `since`, took longer than timeout_s."""
        while True:
            try:
                result: Prepared = self._results.get(timeout=_POLL_S)
                return result
            except queue.Empty:
                self._check(waiting_for, since)

    def take(self, result: Prepared) -> tuple[Any, ...]:
        """The arrays of `result`, copied out of its slot (which is then free), followed by its extras."""
        slot = self._shm[result.worker][result.slot]
        arrays = tuple(np.ndarray(shape, np.dtype(dtype), buffer=slot.buf, offset=offset).copy()
                       for dtype, shape, offset in result.arrays)
        self._free[result.worker].append(result.slot)
        return arrays + result.extras

    def release(self, result: Prepared) -> None:
        """Frees the slot of a result that is not taken (an error)."""
        self._free[result.worker].append(result.slot)

    def _check(self, batch: int, since: float) -> None:
        worker = batch % self.workers
        for w, proc in enumerate(self._procs):
            if proc.exitcode is not None:
                raise DataError(f"data worker {w} (pid {proc.pid}) {_describe_exit(proc.exitcode)} while batches "
                                f"were being prepared (waiting for batch {batch}): look for its cause (out of "
                                "memory: fewer data.workers or a smaller data.prefetch_batches), or set "
                                "data.workers=0 to read in the training process")
        waited = time.monotonic() - since
        if waited > self.timeout_s:
            raise DataError(f"data worker {worker} (pid {self._procs[worker].pid}) has not delivered batch {batch} "
                            f"in {waited:.0f} s (data.worker_timeout_s={self.timeout_s:g}): it is hung or far too "
                            "slow; check the data source, or raise data.worker_timeout_s")

    def close(self) -> None:
        """Stops the workers and frees the shared memory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for tasks in self._tasks:
            try:
                tasks.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for proc in self._procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for q in (*self._tasks, self._results):
            q.close()
            q.cancel_join_thread()
        for row in self._shm:
            for shm in row:
                shm.close()
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
