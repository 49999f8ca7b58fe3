"""The batch iterator: the next batches are prepared while the current step runs, by a background thread of
the training process (no pool) or by the rank's data worker processes (hvdtrain/data/workers.py).

Either way the batches come out in order and are the same: the samples of batch b are fixed by the
indices, its augmentation by (seed, rank, epoch, b) (the transform), whoever prepares it.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from hvdtrain.augment.pipeline import CPU_KERNEL, TrainTransform
from hvdtrain.data.source import ArraySource, SampleError, Source
from hvdtrain.data.workers import Prepared, WorkerPool, prepare_batch
from hvdtrain.errors import DataError

# (x, y, batch index) -> a batch: (x, y), or (x, y, what the step still applies on the device)
Transform = Callable[[np.ndarray, np.ndarray, int], tuple[Any, ...]]
_DONE = object()
_POLL_S = 0.1


class _Pass:
    """The queue, stop flag and worker thread of one iteration over the loader (thread mode)."""

    def __init__(self, prefetch: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def put(self, item: Any) -> bool:
        """Blocks until `item` is queued (True) or the pass is stopped (False)."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def end(self) -> None:
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)


class BatchLoader:
    """Iterates the batches of `indices` of `source` in order: (x, y) or (x, y, extras) numpy batches.

    `transform(x, y, batch_index)` (augmentation, standardisation) runs where the batch is prepared. Without
    a `pool` a background thread prepares them into a bounded queue; with one, the pool's workers do, at
    most `prefetch` batches (and two per worker) ahead. A read or worker error is raised in the consumer at
    the batch it concerns; leaving the loop early stops the pass. `skip_errors` (data.on_error=skip) leaves
    unreadable samples out of their batch; `skipped` lists those of the batches consumed so far.
    `wait_seconds` is the total time the consumer spent waiting for batches (data wait). Each iteration is
    a fresh pass over `indices`.
    """

    def __init__(self, source: Source | np.ndarray, labels: np.ndarray | None = None, indices: Any = None,
                 batch_size: int = 1, *, prefetch: int = 2, transform: Transform | None = None,
                 pool: WorkerPool | None = None, source_key: str = "train", skip_errors: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(source, np.ndarray):  # (x, y) arrays: the in-memory shorthand
            assert labels is not None, "arrays need their labels"
            source = ArraySource(source if source.dtype in (np.uint8, np.float32) else source.astype(np.float32),
                                 labels)
        self.source, self.indices = source, np.asarray(indices)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.transform = transform
        self.pool, self.source_key, self.skip_errors = pool, source_key, skip_errors
        if pool is not None and isinstance(transform, TrainTransform):
            # Workers import no framework: they use the framework-free kernel (the same pixels).
            self.transform = dataclasses.replace(transform, kernel=CPU_KERNEL)
        self.wait_seconds = 0.0
        self.skipped: list[str] = []
        self._pass: _Pass | None = None
        self.on_close: Callable[[], None] | None = None  # also run by close() (a pipeline owned by this loader)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _batch_indices(self, b: int) -> np.ndarray:
        return self.indices[b * self.batch_size:(b + 1) * self.batch_size]

    # ------------------------------------------------------------------------------------------ thread mode

    def _work(self, run: _Pass) -> None:
        try:
            for b in range(len(self)):
                item, skipped = prepare_batch(self.source, self._batch_indices(b), self.transform, b,
                                              self.skip_errors)
                if not run.put((item, skipped)):
                    return
            run.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            run.put(exc)

    def _thread_batches(self) -> Iterator[tuple[Any, ...]]:
        run = self._pass = _Pass(self.prefetch)
        run.thread = threading.Thread(target=self._work, args=(run,), name="hvdtrain-loader", daemon=True)
        run.thread.start()
        try:
            while True:
                start = time.perf_counter()
                got = self._next(run)
                self.wait_seconds += time.perf_counter() - start
                if got is _DONE:
                    return
                if isinstance(got, BaseException):
                    raise got
                item, skipped = got
                self.skipped += skipped
                yield item
        finally:
            run.end()  # only this pass: a later pass may already be running

    @staticmethod
    def _next(run: _Pass) -> Any:
        # Polls rather than blocking forever, so close() from elsewhere or a vanished worker cannot hang us.
        while True:
            try:
                return run.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if run.stop.is_set():
                    return _DONE
                if run.thread is not None and not run.thread.is_alive() and run.queue.empty():
                    raise RuntimeError("the batch loader thread ended without finishing the epoch") from None

    # ------------------------------------------------------------------------------------------ pool mode

    def _pool_batches(self, pool: WorkerPool) -> Iterator[tuple[Any, ...]]:
        pass_id = pool.new_pass()
        ahead = max(self.prefetch, pool.workers)
        submitted, ready = 0, {}
        for b in range(len(self)):
            start, since = time.perf_counter(), time.monotonic()
            while b not in ready:
                # Batches go out in order, each to worker batch mod W once that worker has a free slot.
                while submitted < min(len(self), b + ahead + 1) and pool.has_free_slot(submitted % pool.workers):
                    pool.submit(pass_id, submitted, self.source_key, self._batch_indices(submitted),
                                self.transform, self.skip_errors)
                    submitted += 1
                result = pool.receive(b, since)
                if result.pass_id != pass_id:  # left over from an abandoned pass
                    pool.release(result)
                    continue
                ready[result.batch] = result
            result = ready.pop(b)
            self.wait_seconds += time.perf_counter() - start
            yield self._take(pool, result)

    def _take(self, pool: WorkerPool, result: Prepared) -> tuple[Any, ...]:
        if result.error is not None:
            pool.release(result)
            kind, message, sample = result.error
            if kind == "crash":
                raise RuntimeError(f"a data worker failed preparing batch {result.batch}:\n{message}")
            raise SampleError.from_message(sample, message) if kind == "sample" else DataError(message)
        self.skipped += result.skipped
        return pool.take(result)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._end_pass()
        if self.pool is not None:
            return self._pool_batches(self.pool)
        return self._thread_batches()

    def close(self) -> None:
        """Stops the background thread of the current pass (idempotent); a pool stays up for the next pass
        unless `on_close` closes it."""
        self._end_pass()
        if self.on_close is not None:
            self.on_close()

    def _end_pass(self) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
