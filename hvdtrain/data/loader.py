"""Background-thread batch iterator: the next batches are gathered while the current step runs."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

Transform = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
_DONE = object()


class BatchLoader:
    """Iterates (x, y) numpy batches of `indices` in order, prepared by a worker thread into a bounded queue.

    `transform(x, y, batch_index)` (e.g. augmentation) runs in the worker. A worker exception is re-raised
    in the consumer; leaving the loop early stops the worker. `wait_seconds` is the time the consumer spent
    blocked on the queue (data wait).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray, batch_size: int, *,
                 prefetch: int = 2, transform: Transform | None = None) -> None:
        self.x, self.y, self.indices = x, y, indices
        self.batch_size = batch_size
        self.transform = transform
        self.wait_seconds = 0.0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _work(self) -> None:
        try:
            for b in range(len(self)):
                idx = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
                xb, yb = np.ascontiguousarray(self.x[idx]), np.ascontiguousarray(self.y[idx])
                if self.transform is not None:
                    xb, yb = self.transform(xb, yb, b)
                if not self._put((xb, yb)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self._thread = threading.Thread(target=self._work, name="hvdtrain-loader", daemon=True)
        self._thread.start()
        try:
            while True:
                start = time.perf_counter()
                item = self._queue.get()
                self.wait_seconds += time.perf_counter() - start
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stops the worker thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
