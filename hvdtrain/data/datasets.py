"""`load_dataset`: the run's training and validation sources from `data.name` (docs/data.md).

In memory: digits and synthetic (float32, small), cifar10 and mnist (uint8, as their files store them), npz
(uint8 or float32; memory-mapped when the file stores the arrays uncompressed, or from a folder of .npy
files). Streamed from disk: image_folder, shards, and your own dataset by import path.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.data.source import ArraySource, Dataset, Source, split
from hvdtrain.data.standard import load_cifar10, load_mnist
from hvdtrain.errors import DataError

# A loader returns (train source, validation source or None, class names).
Loaded = tuple[Source, Source | None, list[str] | tuple[str, ...]]


def load_dataset(cfg: Any, seed: int, task: str = "classification") -> Dataset:
    """The sources of `cfg` (a DataConfig) with targets of `task`'s kind; without a given validation set,
    `cfg.val_fraction` of the samples (chosen from `seed`) is split off for validation."""
    train, val, names = _loader(cfg, task)(cfg, seed)
    if val is None:
        train, val = split(train, cfg.val_fraction, seed)
    if len(train) == 0:
        raise DataError(f"data.name={cfg.name}: no training samples left after the validation split: "
                        "lower data.val_fraction or add samples")
    if val.image_shape != train.image_shape:
        raise DataError(f"data.name={cfg.name}: validation images are {list(val.image_shape)} but training images "
                        f"{list(train.image_shape)}: store both at the same size (or set data.image_size)")
    return Dataset(train, val, tuple(names))


def _loader(cfg: Any, task: str) -> Callable[[Any, int], Loaded]:
    from hvdtrain.data.folder import open_image_folder
    from hvdtrain.data.shards import open_shards
    from hvdtrain.data.user_data import open_user_dataset

    if cfg.user_dataset:
        return lambda c, s: open_user_dataset(c, task)
    if cfg.name in ("tokens", "text"):
        return lambda c, s: _tokens(c)
    if task != "classification" and cfg.name not in ("npz", "diabetes"):
        raise DataError(f"data.name={cfg.name} holds class labels, but task={task}: train it with "
                        "task=classification, or give npz data (or your own dataset) with the task's targets")
    loaders: dict[str, Callable[[Any, int], Loaded]] = {
        "digits": _digits, "synthetic": _synthetic, "npz": lambda c, s: _npz(c, task),
        "diabetes": lambda c, s: _diabetes(c, task),
        "image_folder": lambda c, s: open_image_folder(c), "shards": lambda c, s: open_shards(c),
        "cifar10": lambda c, s: _arrays(c, load_cifar10(c, _require_path(c, "cifar-10-batches-py directory"))),
        "mnist": lambda c, s: _arrays(c, load_mnist(c, _require_path(c, "folder of MNIST IDX files")))}
    if cfg.name not in loaders:
        raise DataError(f"data.name={cfg.name!r} is unknown: choose one of {', '.join(loaders)}")
    return loaders[cfg.name]


def _tokens(cfg: Any) -> Loaded:
    """A `tokenize` directory's windows (data.name=text: its cache entry's); the classes are the vocabulary's token
    ids (the model's output width)."""
    from hvdtrain.data.text import text_tokens
    from hvdtrain.data.tokens import open_tokens

    directory = text_tokens(cfg) if cfg.name == "text" else \
        _require_path(cfg, "token directory written by `hvdtrain tokenize`")
    train, val, meta = open_tokens(directory, cfg.block_size)
    return train, val, [str(i) for i in range(int(meta["vocab_size"]))]


def _arrays(cfg: Any, loaded: tuple[Any, ...]) -> Loaded:
    x, y, x_val, y_val, names = loaded
    val = ArraySource(x_val, y_val, f"{cfg.name} validation") if x_val is not None else None
    return ArraySource(x, y, cfg.name), val, names


def digits_file() -> Path:
    """scikit-learn's copy of the UCI digits (what `load_digits` reads), found without importing scikit-learn:
    its import (SciPy among others) costs about a second in every process."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name=digits needs scikit-learn, which ships the dataset: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _digits(cfg: Any, seed: int) -> Loaded:
    # One row per image: 64 pixels of 17 grey levels (0..16), then the label. Kept as float32 (1,797 images of
    # 8x8, 460 KB).
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float64)
    x = (table[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[..., None]
    return _arrays(cfg, (x, table[:, -1].astype(np.int64), None, None, [str(c) for c in range(10)]))


def _diabetes(cfg: Any, task: str) -> Loaded:
    """scikit-learn's diabetes regression set (442 patients, 10 features, a disease progression score), read from
    its bundled files without importing scikit-learn, as `load_diabetes()` gives it: each feature centred and
    scaled to unit norm (standard deviation x sqrt(442)), the target as it is (25 to 346)."""
    if task != "regression":
        raise DataError(f"data.name=diabetes is a regression set, but task={task}: set task=regression")
    folder = digits_file().parent
    raw = np.loadtxt(folder / "diabetes_data_raw.csv.gz", dtype=np.float64)
    target = np.loadtxt(folder / "diabetes_target.csv.gz", dtype=np.float64)
    x = (raw - raw.mean(axis=0)) / raw.std(axis=0) / np.sqrt(len(raw))
    return ArraySource(x.astype(np.float32), target.astype(np.float32).reshape(-1, 1), "diabetes"), None, ["target"]


def _synthetic(cfg: Any, seed: int) -> Loaded:
    """Uniform noise with a class-dependent brightness offset (+0.5 * label / classes), so it is learnable."""
    rng = np.random.default_rng(seed)
    n, shape, classes = cfg.synthetic_samples, tuple(cfg.synthetic_shape), cfg.num_classes
    y = rng.integers(0, classes, size=n)
    x = rng.random((n, *shape), dtype=np.float32)
    x = np.clip(x + (0.5 * y / classes).astype(np.float32).reshape(-1, 1, 1, 1), 0.0, 1.0)
    return _arrays(cfg, (x, y, None, None, [str(c) for c in range(classes)]))


def _require_path(cfg: Any, kind: str) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is required for data.name={cfg.name}: set data.path=/path/to/{kind}")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data.path={cfg.path} does not exist: set data.path to an existing {kind}")
    return path


def _as_inputs(x: np.ndarray, what: str) -> np.ndarray:
    """Feature vectors (N, F) become float32; images: uint8 stays uint8 (a memory map stays mapped), other
    integers become uint8, floats float32."""
    if x.ndim == 2:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"{what} has dtype {x.dtype}: expected numbers (feature vectors)")
        return x if x.dtype == np.float32 else x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what} has shape {x.shape}: expected (N, F) feature vectors, or (N, H, W) or "
                        "(N, H, W, C) images")
    if x.dtype == np.uint8 or x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if len(x) and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{what} holds integers outside 0..255: store 8-bit pixels (uint8) or floats in [0, 1]")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} has dtype {x.dtype}: expected uint8 or float images")
    return x.astype(np.float32)


def _npz_member(path: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of an .npz: memory-mapped when stored uncompressed (np.savez), else read (np.savez_compressed)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {name} has no local header")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30],
                                                                                                 "little")
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{name} holds Python objects")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_arrays(cfg: Any, path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():  # x.npy, y.npy (and x_val.npy, y_val.npy), memory-mapped
        found = {p.stem: p for p in path.glob("*.npy") if p.stem in ("x", "y", "x_val", "y_val")}
        try:
            return {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in found.items()}
        except (OSError, ValueError) as exc:
            raise DataError(f"data.path={cfg.path}: not readable .npy files ({exc}): re-create them with "
                            "numpy.save") from None
    fix = "re-create it with numpy.savez(path, x=images, y=labels)"
    try:
        with zipfile.ZipFile(path) as archive:
            return {n[:-4]: _npz_member(path, archive, n) for n in archive.namelist() if n.endswith(".npy")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"data.path={cfg.path}: not a readable .npz file ({exc}): {fix}") from None


def _npz(cfg: Any, task: str) -> Loaded:
    path = _require_path(cfg, "file.npz")
    arrays = _read_arrays(cfg, path)
    fix = ("save x.npy and y.npy in the folder" if path.is_dir() else
           "re-create it with numpy.savez(path, x=images, y=labels)")
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"data.path={cfg.path} holds {sorted(arrays)} but needs arrays 'x' and 'y': {fix}")
    x, y = _as_inputs(arrays["x"], f"data.path={cfg.path}: x"), _targets(arrays["y"], len(arrays["x"]), cfg, task)
    val = None
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"data.path={cfg.path} holds only one of 'x_val' and 'y_val': store both (explicit "
                        "validation set) or neither (split by data.val_fraction)")
    top = int(y.max(initial=0))
    if "x_val" in arrays:
        x_val = _as_inputs(arrays["x_val"], f"data.path={cfg.path}: x_val")
        y_val = _targets(arrays["y_val"], len(x_val), cfg, task)
        if x_val.shape[1:] != x.shape[1:] or y_val.shape[1:] != y.shape[1:]:
            raise DataError(f"data.path={cfg.path}: x_val images are {x_val.shape[1:]} but x images are "
                            f"{x.shape[1:]}: store both at the same size")
        val = ArraySource(x_val, y_val, "npz validation")
        top = max(top, int(y_val.max(initial=0)))
    if task == "regression":
        names = ["target"] if y.shape[1] == 1 else [f"target{i}" for i in range(y.shape[1])]
    else:
        names = [str(c) for c in range(y.shape[1] if task == "multilabel" else top + 1)]
    return ArraySource(x, y, "npz"), val, names


def _targets(y: np.ndarray, n: int, cfg: Any, task: str) -> np.ndarray:
    """The task's targets: int labels (n,) for classification, float32 (n, T) for regression, 0/1 float32 (n, C)
    for multilabel."""
    if task == "classification":
        return _labels(y, n, cfg)
    y = np.asarray(y)
    if task == "regression" and y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or len(y) != n or not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)
                                          or y.dtype == np.bool_):
        kind = "(N,) or (N, T) numbers" if task == "regression" else "(N, C) 0/1 values, one column per label"
        raise DataError(f"data.path={cfg.path}: task={task} needs y of {kind} for {n} samples, got dtype {y.dtype} "
                        f"shape {y.shape}")
    y = y.astype(np.float32)
    if task == "multilabel" and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"data.path={cfg.path}: task=multilabel needs y of 0/1 values (one column per label): "
                        "store multi-hot targets")
    if not np.isfinite(y).all():
        raise DataError(f"data.path={cfg.path}: y holds NaN or infinite values: remove or fill them")
    return y


def _labels(y: np.ndarray, n: int, cfg: Any) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"data.path={cfg.path}: labels must be {n} integers (one per image), got dtype "
                        f"{y.dtype} shape {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"data.path={cfg.path}: labels must be >= 0 (class indices), found {y.min()}")
    return np.asarray(y, dtype=np.int64)
