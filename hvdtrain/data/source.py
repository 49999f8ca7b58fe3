"""Map-style sample sources: what the loader reads batches from, whether the samples live in memory or on disk.

A source reads samples on demand, by sample index (built-in sources keep only file lists, offsets and
labels in memory, or arrays that are memory-mapped or small):
- `read(indices)` returns the images, an (n, H, W, C) batch, uint8 (pixel values 0..255) or float32 in
  [0, 1], and their (n,) int64 labels. Images stay uint8 until the model: the backends scale them to
  float on the device.
- `epoch_order(seed, epoch, shuffle)` is the epoch's global order (a permutation of all indices, the same
  on every rank and for any number of ranks or workers); hvdtrain/data/sharding.py cuts it into per-rank
  batches. Sources whose reads are cheap in any order use a full permutation; tar shards use an order
  that keeps each rank's reads sequential (hvdtrain/data/shards.py).
- A source must pickle cheaply (file lists, paths, index arrays; no open files): worker processes receive
  it once and read from it themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from hvdtrain.data.sharding import epoch_order
from hvdtrain.errors import DataError


class SampleError(DataError):
    """One sample cannot be read (unreadable or truncated file): names the sample and the fix."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"cannot read {what} ({reason}): fix or remove it, or set data.on_error=skip to skip "
                         "unreadable samples")
        self.what = what

    @classmethod
    def from_message(cls, what: str, message: str) -> SampleError:
        """The error with its message as it was already written (handed over by a data worker process)."""
        error = cls.__new__(cls)
        DataError.__init__(error, message)
        error.what = what
        return error


@runtime_checkable
class Source(Protocol):
    """A map-style dataset: labels in memory, images read by index (see the module docstring)."""

    on_disk: bool                          # reads can fail mid-epoch (files); in-memory reads cannot

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of every image `read` returns, or (F,) of feature vectors."""
        ...

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images at `indices`, stacked (n, H, W, C), and their labels; raises SampleError naming a sample it
        cannot read."""
        ...

    def describe(self, index: int) -> str:
        """What sample `index` is, for messages and sample logs (a file path, shard and key, or an index)."""
        ...

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        """The epoch's global order of all indices (identical on every rank)."""
        ...


class ArraySource:
    """Images held in (or memory-mapped from) one array, uint8 or float32 in [0, 1]."""

    on_disk = False

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str = "array") -> None:
        if images.dtype != np.uint8 and images.dtype != np.float32:
            raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
        labels = np.asarray(labels)
        # Class labels as int64; float targets (regression, multilabel: (n, width)) as they are.
        self.labels = labels if np.issubdtype(labels.dtype, np.floating) else labels.astype(np.int64)
        self.images, self.name = images, name
        self.image_shape: tuple[int, ...] = tuple(images.shape[1:])  # (H, W, C), or (F,) for feature vectors

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        # Fancy indexing copies, and reads only these rows of a memory-mapped array.
        return np.ascontiguousarray(self.images[indices]), self.labels[indices]

    def __getstate__(self) -> dict[str, Any]:
        # A memory-mapped array travels to worker processes as its file and layout, not as its contents.
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename is not None:
            mm = self.images
            state["images"] = ("memmap", mm.filename, mm.dtype.str, mm.offset, mm.shape,
                               "F" if mm.flags.f_contiguous and not mm.flags.c_contiguous else "C")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], tuple):
            _, filename, dtype, offset, shape, order = state["images"]
            state["images"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape,
                                        order=order)
        self.__dict__.update(state)

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        return epoch_order(len(self), seed, epoch, shuffle)


class SubsetSource:
    """The samples `indices` of `parent` (a train/validation split): reads and names go to the parent.

    The order is a permutation of the subset, except for a parent whose order keeps reads sequential (tar
    shards, `sequential_order`): then it is the parent's order restricted to the subset."""

    def __init__(self, parent: Source, indices: np.ndarray) -> None:
        self.parent, self.indices = parent, np.asarray(indices, dtype=np.int64)
        self.image_shape = parent.image_shape
        self.on_disk = parent.on_disk

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.parent.read(self.indices[np.asarray(indices, dtype=np.int64)])

    def describe(self, index: int) -> str:
        return self.parent.describe(int(self.indices[index]))

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        if not shuffle or not getattr(self.parent, "sequential_order", False):
            return epoch_order(len(self), seed, epoch, shuffle)
        position = np.full(len(self.parent), -1, dtype=np.int64)
        position[self.indices] = np.arange(len(self))
        order: np.ndarray = position[self.parent.epoch_order(seed, epoch, shuffle)]
        return order[order >= 0]


def read_skipping(source: Source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`source.read(indices)`, leaving out the samples that cannot be read (data.on_error=skip): the images,
    their labels, and the descriptions of the skipped samples."""
    try:
        return (*source.read(indices), [])
    except SampleError:
        pass
    images, labels, skipped = [], [], []
    for index in indices:
        try:
            x, y = source.read(np.asarray([index]))
            images.append(x[0])
            labels.append(y[0])
        except SampleError as exc:
            skipped.append(exc.what)
    if not images:
        return np.zeros((0, *source.image_shape), dtype=np.uint8), np.zeros(0, dtype=np.int64), skipped
    return np.stack(images), np.asarray(labels, dtype=np.int64), skipped


@dataclass(frozen=True)
class Dataset:
    """The training and validation sources of a run and their classes."""

    train: Source
    val: Source
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of one image, or (F,) of a feature vector."""
        return self.train.image_shape


def split(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """Training and validation subsets: `fraction` of the samples, chosen from `seed`, for validation."""
    perm = np.random.default_rng(seed).permutation(len(source))
    n_val = int(round(len(source) * fraction))
    return SubsetSource(source, np.sort(perm[n_val:])), SubsetSource(source, np.sort(perm[:n_val]))


def read_all(source: Source) -> tuple[np.ndarray, np.ndarray]:
    """Every sample of a (small) source, in index order: for previews and tests, never for training data."""
    return source.read(np.arange(len(source)))


class PathList(Sequence[str]):
    """File paths packed into one byte buffer and an offset array: a million ImageNet paths take about 60 MB as
    Python strings, in every rank and in every data worker, and a few tens of MB like this, pickled in one
    piece. Indexing returns a str."""

    def __init__(self, paths: Iterable[str] = (), prefix: str = "") -> None:
        self.prefix = prefix  # shared by every path (the dataset's folder): stored once
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    @classmethod
    def concat(cls, parts: Sequence[PathList]) -> PathList:
        """The lists (of one prefix) one after the other, without unpacking them."""
        assert len({p.prefix for p in parts}) <= 1, "concatenated path lists share their prefix"
        out = cls(prefix=parts[0].prefix if parts else "")
        out._blob = np.concatenate([p._blob for p in parts]) if parts else np.zeros(0, dtype=np.uint8)
        sizes = np.concatenate([np.diff(p._offsets) for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        out._offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=out._offsets[1:])
        return out

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        raw: bytes = self._blob[self._offsets[index]:self._offsets[index + 1]].tobytes()
        return self.prefix + raw.decode("utf-8", "surrogateescape")


def as_path_list(paths: Iterable[Path | str]) -> PathList:
    """Paths packed into a PathList (small in memory, pickled fast for worker processes)."""
    return PathList(str(p) for p in paths)
