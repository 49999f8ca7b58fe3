"""CIFAR-10 python batches and MNIST IDX files, written here in their real formats (tiny), read back."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from hvdtrain.config import load_config
from hvdtrain.data import load_dataset
from hvdtrain.errors import DataError


def write_cifar(directory: Path, batches: int = 2, per_batch: int = 6, test: bool = True) -> np.ndarray:
    """Writes CIFAR-10-format batches; returns the images of data_batch_1 as (N, 32, 32, 3) uint8."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    first = None
    names = [f"data_batch_{i}" for i in range(1, batches + 1)] + (["test_batch"] if test else [])
    for index, name in enumerate(names):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # red plane, green, blue
        labels = [(index + i) % 10 for i in range(per_batch)]
        with (directory / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": rows}, f, protocol=2)
        first = images if first is None else first
    return first


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False) -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(directory: Path, n: int = 12, compress: bool = False) -> np.ndarray:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", images, 0x803, compress)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", np.arange(n) % 10, 0x801, compress)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", images[:4], 0x803, compress)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", np.arange(4) % 10, 0x801, compress)
    return images


def test_cifar10_batches_load_as_nhwc_with_the_test_batch_for_validation(tmp_path: Path) -> None:
    first = write_cifar(tmp_path / "cifar")
    data = load_dataset(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / 'cifar'}"]).data, 0)
    assert data.x_train.shape == (12, 32, 32, 3) and data.x_val.shape == (6, 32, 32, 3)
    assert np.array_equal(data.x_train[:6], first.astype(np.float32) / 255.0)  # channel planes -> NHWC
    assert list(data.y_train[:6]) == [0, 1, 2, 3, 4, 5] and data.num_classes == 10
    assert data.class_names[0] == "airplane"


def test_cifar10_without_test_batch_splits_by_val_fraction(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c", test=False)
    data = load_dataset(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / 'c'}",
                                           "data.val_fraction=0.25"]).data, 0)
    assert (len(data.y_train), len(data.y_val)) == (9, 3)


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    directory = tmp_path / "evil"
    directory.mkdir()
    (directory / "data_batch_1").write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print") as info:
        load_dataset(load_config(None, ["data.name=cifar10", f"data.path={directory}"]).data, 0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_load(tmp_path: Path, compress: bool) -> None:
    images = write_mnist(tmp_path / "mnist", compress=compress)
    data = load_dataset(load_config(None, ["data.name=mnist", f"data.path={tmp_path / 'mnist'}"]).data, 0)
    assert data.x_train.shape == (12, 28, 28, 1) and data.x_val.shape == (4, 28, 28, 1)
    assert np.array_equal(data.x_train[..., 0], images.astype(np.float32) / 255.0)
    assert list(data.y_train) == [i % 10 for i in range(12)] and data.num_classes == 10


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8)), "magic number"),
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes()[:-5]),
     "data bytes for dimensions"),
    (lambda d: (d / "train-labels-idx1-ubyte").unlink(), "has only one of"),
])
def test_corrupt_mnist_files_are_named_in_one_line(tmp_path: Path, damage, words: str) -> None:
    write_mnist(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(DataError, match=words) as info:
        load_dataset(load_config(None, ["data.name=mnist", f"data.path={tmp_path / 'm'}"]).data, 0)
    assert "\n" not in str(info.value)


def test_missing_files_say_what_to_point_at(tmp_path: Path) -> None:
    for name, words in (("cifar10", "no data_batch_"), ("mnist", "no train-images-idx3-ubyte")):
        with pytest.raises(DataError, match=words):
            load_dataset(load_config(None, [f"data.name={name}", f"data.path={tmp_path}"]).data, 0)
