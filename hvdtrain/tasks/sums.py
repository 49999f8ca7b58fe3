"""Named sums: add them, reduce them over ranks in one allreduce, keep them in a checkpoint (plain JSON)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hvdtrain.tasks.metrics import Sums


def add(total: Mapping[str, np.ndarray], more: Mapping[str, np.ndarray]) -> Sums:
    """Key by key; a key in one only is taken as it is."""
    out = {k: np.asarray(v, dtype=np.float64) for k, v in total.items()}
    for key, value in more.items():
        out[key] = out[key] + value if key in out else np.asarray(value, dtype=np.float64)
    return out


def allreduce(allreduce_sum: Callable[[np.ndarray], np.ndarray], sums: Mapping[str, np.ndarray]) -> Sums:
    """The sum over ranks of every named sum, packed into one vector in key order (every rank holds the same
    keys and shapes: the task's `empty_sums` plus what the batches added)."""
    keys = sorted(sums)
    shapes = [np.shape(sums[k]) for k in keys]
    flat = np.concatenate([np.asarray(sums[k], dtype=np.float64).ravel() for k in keys]) if keys else np.zeros(0)
    reduced = allreduce_sum(flat)
    out: Sums = {}
    offset = 0
    for key, shape in zip(keys, shapes, strict=True):
        size = int(np.prod(shape))
        out[key] = reduced[offset:offset + size].reshape(shape)
        offset += size
    return out


def to_plain(sums: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """JSON-ready: floats and lists of floats."""
    return {k: np.asarray(v, dtype=np.float64).tolist() for k, v in sums.items()}


def from_plain(values: Mapping[str, Any]) -> Sums:
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
