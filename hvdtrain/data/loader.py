"""Background-thread batch iterator: the next batches are gathered while the current step runs."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# (x, y, batch index) -> a batch: (x, y), or (x, y, what the step still applies on the device)
Transform = Callable[[np.ndarray, np.ndarray, int], tuple[Any, ...]]
_DONE = object()
_POLL_S = 0.1


class _Pass:
    """The queue, stop flag and worker thread of one iteration over the loader."""

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
    """Iterates (x, y) numpy batches of `indices` in order, prepared by a worker thread into a bounded queue.

    `transform(x, y, batch_index)` (e.g. augmentation) runs in the worker. A worker exception is re-raised
    in the consumer; leaving the loop early (break, exception, garbage collection) stops the worker.
    `wait_seconds` is the total time the consumer spent blocked on the queue (data wait). Each iteration
    is a fresh pass over `indices`.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray, batch_size: int, *,
                 prefetch: int = 2, transform: Transform | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.indices = x, y, np.asarray(indices)
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.transform = transform
        self.wait_seconds = 0.0
        self._pass: _Pass | None = None

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _work(self, run: _Pass) -> None:
        try:
            for b in range(len(self)):
                idx = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
                xb, yb = np.ascontiguousarray(self.x[idx]), np.ascontiguousarray(self.y[idx])
                batch = (xb, yb) if self.transform is None else self.transform(xb, yb, b)
                if not run.put(batch):
                    return
            run.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            run.put(exc)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self.close()
        run = self._pass = _Pass(self.prefetch)
        run.thread = threading.Thread(target=self._work, args=(run,), name="hvdtrain-loader", daemon=True)
        run.thread.start()
        try:
            while True:
                start = time.perf_counter()
                item = self._next(run)
                self.wait_seconds += time.perf_counter() - start
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
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

    def close(self) -> None:
        """Stops the worker thread of the current pass (idempotent)."""
        if self._pass is not None:
            self._pass.end()
            self._pass = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
