"""CIFAR-10 python batches and MNIST IDX files, written here in their real formats (tiny), read back."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_arrays import arrays

from hvdtrain.config import load_config
from hvdtrain.data import load_dataset
from hvdtrain.errors import DataError


def _load(cfg: Any, seed: int) -> Any:
    """The dataset read whole into arrays (float32 pixels), as the assertions want them."""
    return arrays(load_dataset(cfg, seed))


class Py2Pickler(pickle._Pickler):
    """Pickles str and bytes as Python 2's str (SHORT_BINSTRING/BINSTRING), as cPickle wrote CIFAR-10."""

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, str: save_py2_str, bytes: save_py2_str}


def py2_pickle(obj: Any) -> bytes:
    """`obj` pickled as Python 2 with numpy 1 did: protocol 2, str keys, numpy.core.multiarray._reconstruct."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar(directory: Path, batches: int = 2, per_batch: int = 6, test: bool = True,
                py2: bool = True) -> np.ndarray:
    """Writes CIFAR-10 batches (as the real files: Python 2 pickles, unless `py2` is false); returns the
    images of data_batch_1 as (N, 32, 32, 3) uint8."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    first = None
    names = [f"data_batch_{i}" for i in range(1, batches + 1)] + (["test_batch"] if test else [])
    for index, name in enumerate(names):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        rows = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # red plane, green, blue
        labels = [(index + i) % 10 for i in range(per_batch)]
        batch = {"batch_label": f"{name} of CIFAR-10", "labels": labels, "data": rows,
                 "filenames": [f"img_{index}_{i}.png" for i in range(per_batch)]}
        if py2:
            (directory / name).write_bytes(py2_pickle(batch))
        else:
            (directory / name).write_bytes(pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=2))
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
    data = _load(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / 'cifar'}"]).data, 0)
    assert data.x_train.shape == (12, 32, 32, 3) and data.x_val.shape == (6, 32, 32, 3)
    assert np.array_equal(data.x_train[:6], first.astype(np.float32) / 255.0)  # channel planes -> NHWC
    assert list(data.y_train[:6]) == [0, 1, 2, 3, 4, 5] and data.num_classes == 10
    assert data.class_names[0] == "airplane"


def test_cifar10_files_are_python_2_pickles_and_python_3_ones_load_too(tmp_path: Path) -> None:
    write_cifar(tmp_path / "py2")
    raw = (tmp_path / "py2" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"X" not in raw[:40]  # no Python 3 unicode strings: keys are Python 2 str
    first = write_cifar(tmp_path / "py3", py2=False)
    for name in ("py2", "py3"):
        data = _load(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / name}"]).data, 0)
        assert np.array_equal(data.x_train[:6], first.astype(np.float32) / 255.0), name


def test_cifar10_batches_in_numeric_order_and_the_parent_folder_is_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "root" / "cifar-10-batches-py"
    write_cifar(directory, batches=10, per_batch=1, test=False)
    (directory / "data_batch_1.bak").write_bytes(b"not read")
    (directory / "batches.meta").write_bytes(b"not read either")
    for path in (directory, tmp_path / "root"):  # the folder itself, or the one it was extracted into
        data = _load(load_config(None, ["data.name=cifar10", f"data.path={path}",
                                               "data.val_fraction=0"]).data, 0)
        assert list(data.y_train) == list(range(10))  # data_batch_1, 2, ..., 10 (not 1, 10, 2, ...)


def test_cifar10_without_test_batch_splits_by_val_fraction(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c", test=False)
    data = _load(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / 'c'}",
                                           "data.val_fraction=0.25"]).data, 0)
    assert (len(data.y_train), len(data.y_val)) == (9, 3)


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    directory = tmp_path / "evil"
    directory.mkdir()
    (directory / "data_batch_1").write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print") as info:
        _load(load_config(None, ["data.name=cifar10", f"data.path={directory}"]).data, 0)
    assert "\n" not in str(info.value)


def cifar_batch(data: Any, labels: Any) -> bytes:
    return py2_pickle({"data": data, "labels": labels})


@pytest.mark.parametrize("content,words", [
    (cifar_batch(np.zeros((2, 3072), np.uint8), [1, 2])[:60], "not a CIFAR-10 python batch (pickle data was "
                                                              "truncated)"),
    (cifar_batch(np.zeros((2, 1024), np.uint8), [1, 2]), "expected uint8 [N, 3072]"),
    (cifar_batch(np.zeros((2, 3072), np.float32), [1, 2]), "data float32[2, 3072]"),
    (cifar_batch(np.zeros((2, 3072), np.uint8), [1]), "with 1 labels"),
    (cifar_batch(np.zeros((2, 3072), np.uint8), ["cat", "dog"]), "labels are |S3, expected integers"),
    (cifar_batch(np.zeros((2, 3072), np.uint8), [1.5, 2.0]), "labels are float64, expected integers"),
    (cifar_batch(np.zeros((2, 3072), np.uint8), [3, 10]), "labels outside 0..9"),
    (py2_pickle({"labels": [1]}), "not a CIFAR-10 python batch (b'data')"),
    (py2_pickle([1, 2]), "not a CIFAR-10 python batch"),
])
def test_corrupt_cifar10_batches_are_named_in_one_line(tmp_path: Path, content: bytes, words: str) -> None:
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError) as info:
        _load(load_config(None, ["data.name=cifar10", f"data.path={tmp_path / 'c'}"]).data, 0)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'c' / 'data_batch_2'}: ") and words in message, message
    assert "\n" not in message and message.endswith("re-download CIFAR-10's python version (cifar-10-python.tar.gz) "
                                                    "and extract it")


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_load(tmp_path: Path, compress: bool) -> None:
    images = write_mnist(tmp_path / "mnist", compress=compress)
    data = _load(load_config(None, ["data.name=mnist", f"data.path={tmp_path / 'mnist'}"]).data, 0)
    assert data.x_train.shape == (12, 28, 28, 1) and data.x_val.shape == (4, 28, 28, 1)
    assert np.array_equal(data.x_train[..., 0], images.astype(np.float32) / 255.0)
    assert list(data.y_train) == [i % 10 for i in range(12)] and data.num_classes == 10


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(8)), "magic number"),
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes((d / "train-images-idx3-ubyte").read_bytes()[:-5]),
     "data bytes for dimensions"),
    (lambda d: (d / "train-labels-idx1-ubyte").unlink(), "has only one of"),
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes(gzip.compress(bytes(100))[:10] + b"\xff" * 20),
     "Error -3 while decompressing data"),
    (lambda d: (d / "train-images-idx3-ubyte").write_bytes(b"\x1f\x8b" + bytes(30)), "not a valid IDX file"),
    (lambda d: write_idx(d / "t10k-images-idx3-ubyte", np.zeros((4, 32, 32)), 0x803),
     "t10k images are [32, 32] but train images [28, 28]"),
    (lambda d: write_idx(d / "train-labels-idx1-ubyte", np.arange(11) % 10, 0x801), "holds 12 images but"),
])
def test_corrupt_mnist_files_are_named_in_one_line(tmp_path: Path, damage, words: str) -> None:
    write_mnist(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(DataError, match=re.escape(words)) as info:
        _load(load_config(None, ["data.name=mnist", f"data.path={tmp_path / 'm'}"]).data, 0)
    assert "\n" not in str(info.value)


def test_missing_files_say_what_to_point_at(tmp_path: Path) -> None:
    for name, words in (("cifar10", "no data_batch_1..5 files"), ("mnist", "no train-images-idx3-ubyte")):
        with pytest.raises(DataError, match=words):
            _load(load_config(None, [f"data.name={name}", f"data.path={tmp_path}"]).data, 0)
        with pytest.raises(DataError, match="does not exist"):
            _load(load_config(None, [f"data.name={name}", f"data.path={tmp_path / 'nowhere'}"]).data, 0)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    for name, words in (("cifar10", "is a file: extract cifar-10-python.tar.gz"), ("mnist", "is a file: point")):
        with pytest.raises(DataError, match=words):
            _load(load_config(None, [f"data.name={name}", f"data.path={tmp_path / 'cifar-10-python.tar.gz'}"
                                            ]).data, 0)
