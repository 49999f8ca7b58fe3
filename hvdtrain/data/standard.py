"""Standard dataset files on disk: CIFAR-10's python batches and MNIST's IDX files.

    data.name=cifar10  data.path=DIR   DIR holds data_batch_1..5 (any present) and optionally test_batch; or
                                       DIR holds the extracted cifar-10-batches-py folder (torchvision's root)
    data.name=mnist    data.path=DIR   DIR holds train-images-idx3-ubyte, train-labels-idx1-ubyte and
                                       optionally t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be .gz)

When the test files are present they are the validation set (data.val_fraction is then unused); otherwise
the validation set is split off the training files as for every source.
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a pickle can run code, a dataset must not."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    fix = "re-download CIFAR-10's python version (cifar-10-python.tar.gz) and extract it"
    try:
        with path.open("rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc}): {fix}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(f"{path}: data {data.dtype}{list(data.shape)} with {labels.size} labels, expected uint8 "
                        f"[N, 3072] and N labels: {fix}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels are {labels.dtype}, expected integers 0..9: {fix}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise DataError(f"{path}: labels outside 0..9: {fix}")
    # Each row: the 32x32 red plane, then green, then blue, row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # uint8, as stored
    return images, labels.astype(np.int64)


def load_cifar10(cfg: Any, directory: Path) -> tuple[Any, ...]:
    """data_batch_N (in numeric order) for training; test_batch, when present, for validation."""
    if not directory.is_dir():
        raise DataError(f"data.path={cfg.path} is a file: extract cifar-10-python.tar.gz (tar xzf) and point "
                        "data.path at the cifar-10-batches-py directory")
    if (directory / "cifar-10-batches-py").is_dir():  # the folder it was extracted into
        directory = directory / "cifar-10-batches-py"
    numbered = (re.fullmatch(r"data_batch_(\d+)", p.name) for p in directory.iterdir())
    parts = [directory / m.group(0) for m in sorted((m for m in numbered if m), key=lambda m: int(m.group(1)))]
    if not parts:
        raise DataError(f"data.path={cfg.path} has no data_batch_1..5 files: point it at the extracted "
                        "cifar-10-batches-py directory")
    batches = [_cifar_batch(p) for p in parts]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    x_val = y_val = None
    if (directory / "test_batch").is_file():
        x_val, y_val = _cifar_batch(directory / "test_batch")
    return x, y, x_val, y_val, list(CIFAR10_CLASSES)


def _idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    fix = "re-download the MNIST files (the IDX format, optionally gzipped)"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        found, = struct.unpack(">I", raw[:4])
        if found != magic:
            raise ValueError(f"magic number {found:#010x}, expected {magic:#010x}")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        body = raw[4 + 4 * ndim:]
        if len(body) != int(np.prod(dims)):
            raise ValueError(f"{len(body)} data bytes for dimensions {list(dims)}")
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: not a valid IDX file ({exc}): {fix}") from None
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _mnist_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    def find(stem: str) -> Path | None:
        return next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)

    images, labels = find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise DataError(f"data.path={directory} has only one of {prefix}-images-idx3-ubyte and "
                        f"{prefix}-labels-idx1-ubyte: provide both")
    x, y = _idx(images, 0x00000803, 3), _idx(labels, 0x00000801, 1)
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} {len(y)} labels: use files of one release")
    return x[..., None], y.astype(np.int64)  # uint8, as stored


def load_mnist(cfg: Any, directory: Path) -> tuple[Any, ...]:
    """train-* for training; t10k-*, when present, for validation."""
    if not directory.is_dir():
        raise DataError(f"data.path={cfg.path} is a file: point data.path at the folder holding "
                        "train-images-idx3-ubyte[.gz] and the other MNIST IDX files")
    train = _mnist_pair(directory, "train")
    if train is None:
        raise DataError(f"data.path={cfg.path} has no train-images-idx3-ubyte[.gz]: point it at the folder with "
                        "the MNIST IDX files")
    test = _mnist_pair(directory, "t10k")
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise DataError(f"data.path={cfg.path}: t10k images are {list(test[0].shape[1:3])} but train images "
                        f"{list(train[0].shape[1:3])}: use the train and t10k files of one dataset")
    top = int(max(train[1].max(initial=0), test[1].max(initial=0) if test else 0))
    return (*train, *(test or (None, None)), [str(c) for c in range(max(top + 1, 10))])


__all__ = ["CIFAR10_CLASSES", "load_cifar10", "load_mnist"]
