"""Dataset sources (digits, synthetic, npz, image_folder) as float32 NHWC arrays in [0, 1], plus the split."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.data.standard import load_cifar10, load_mnist
from hvdtrain.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class Dataset:
    """Training and validation arrays: x float32 NHWC in [0, 1], y int64 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])


def load_dataset(cfg: Any, seed: int) -> Dataset:
    """Loads `cfg.name` (a DataConfig) and splits off `cfg.val_fraction` for validation, from `seed`."""
    loaders: dict[str, Callable[[Any, int], tuple[Any, ...]]] = {
        "digits": _digits, "synthetic": _synthetic, "npz": _npz, "image_folder": _image_folder,
        "cifar10": lambda c, s: load_cifar10(c, _require_path(c, "cifar-10-batches-py directory")),
        "mnist": lambda c, s: load_mnist(c, _require_path(c, "folder of MNIST IDX files"))}
    if cfg.name not in loaders:
        raise DataError(f"data.name={cfg.name!r} is unknown: choose one of {', '.join(loaders)}")
    x, y, x_val, y_val, names = loaders[cfg.name](cfg, seed)
    if x_val is None:
        x, y, x_val, y_val = _split(x, y, cfg.val_fraction, seed)
    if len(y) == 0:
        raise DataError(f"data.name={cfg.name}: no training samples left after the validation split: "
                        "lower data.val_fraction or add samples")
    num_classes = len(names)
    return Dataset(x.astype(np.float32, copy=False), y.astype(np.int64, copy=False),
                   x_val.astype(np.float32, copy=False), y_val.astype(np.int64, copy=False),
                   num_classes, tuple(names))


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    perm = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(len(y) * fraction))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return x[train], y[train], x[val], y[val]


def _digits(cfg: Any, seed: int) -> tuple[Any, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    return x, bunch.target, None, None, [str(c) for c in range(10)]


def _synthetic(cfg: Any, seed: int) -> tuple[Any, ...]:
    """Uniform noise with a class-dependent brightness offset (+0.5 * label / classes), so it is learnable."""
    rng = np.random.default_rng(seed)
    n, shape, classes = cfg.synthetic_samples, tuple(cfg.synthetic_shape), cfg.num_classes
    y = rng.integers(0, classes, size=n)
    x = rng.random((n, *shape), dtype=np.float32)
    x = np.clip(x + (0.5 * y / classes).astype(np.float32).reshape(-1, 1, 1, 1), 0.0, 1.0)
    return x, y, None, None, [str(c) for c in range(classes)]


def _require_path(cfg: Any, kind: str) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is required for data.name={cfg.name}: set data.path=/path/to/{kind}")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data.path={cfg.path} does not exist: set data.path to an existing {kind}")
    return path


def _as_images(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what} has shape {x.shape}: expected (N, H, W) or (N, H, W, C) images")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what} has dtype {x.dtype}: expected uint8 or float images")
    return x.astype(np.float32)


def _npz(cfg: Any, seed: int) -> tuple[Any, ...]:
    path = _require_path(cfg, "file.npz")
    fix = "re-create it with numpy.savez(path, x=images, y=labels)"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"data.path={cfg.path}: not a readable .npz file ({exc}): {fix}") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"data.path={cfg.path} holds {sorted(arrays)} but needs arrays 'x' and 'y': {fix}")
    x, y = _as_images(arrays["x"], f"data.path={cfg.path}: x"), _labels(arrays["y"], len(arrays["x"]), cfg)
    x_val = y_val = None
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"data.path={cfg.path} holds only one of 'x_val' and 'y_val': store both (explicit "
                        "validation set) or neither (split by data.val_fraction)")
    if "x_val" in arrays:
        x_val = _as_images(arrays["x_val"], f"data.path={cfg.path}: x_val")
        y_val = _labels(arrays["y_val"], len(x_val), cfg)
        if x_val.shape[1:] != x.shape[1:]:
            raise DataError(f"data.path={cfg.path}: x_val images are {x_val.shape[1:]} but x images are "
                            f"{x.shape[1:]}: store both at the same size")
    top = int(max(y.max(initial=0), y_val.max(initial=0) if y_val is not None else 0))
    return x, y, x_val, y_val, [str(c) for c in range(top + 1)]


def _labels(y: np.ndarray, n: int, cfg: Any) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"data.path={cfg.path}: labels must be {n} integers (one per image), got dtype "
                        f"{y.dtype} shape {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"data.path={cfg.path}: labels must be >= 0 (class indices), found {y.min()}")
    return y.astype(np.int64)


def _image_folder(cfg: Any, seed: int) -> tuple[Any, ...]:
    from PIL import Image, UnidentifiedImageError

    root = _require_path(cfg, "folder")
    if not root.is_dir():
        raise DataError(f"data.path={cfg.path} is not a folder: point it at a folder with one sub-folder "
                        "per class")
    # Hidden folders (.ipynb_checkpoints, .git) are never classes.
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.path={cfg.path} has no class sub-folders: put each class's images in "
                        "data.path/<class name>/")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
        if not found:
            raise DataError(f"data.path={cfg.path}: class folder '{name}' has no .png/.jpg/.jpeg images: "
                            "add images or remove the folder")
        files += [(p, label) for p in found]
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
        # PIL reports damaged files as OSError, SyntaxError or ValueError depending on the format.
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as exc:
            raise DataError(f"data.path={cfg.path}: cannot read image {path} ({exc}): "
                            "fix or remove it") from None
    gray = all(img.mode == "L" for img in images)
    size = tuple(cfg.image_size) if cfg.image_size else None
    arrays = []
    for (path, _), img in zip(files, images, strict=True):
        img = img.convert("L" if gray else "RGB")
        if size is not None:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif (img.height, img.width) != (images[0].height, images[0].width):
            raise DataError(f"data.path={cfg.path}: {path} is {img.height}x{img.width} but the first image "
                            f"is {images[0].height}x{images[0].width}: set data.image_size=[H, W] to resize")
        arrays.append(np.asarray(img, dtype=np.uint8))
    x = _as_images(np.stack(arrays), f"data.path={cfg.path}")
    y = np.array([label for _, label in files], dtype=np.int64)
    return x, y, None, None, classes
