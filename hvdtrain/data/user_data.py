"""Your own dataset by import path: `data.name: my_pkg.data:build` (docs/data.md has a worked example).

`build(data_cfg)` is called with the run's `data` section (every rank, and every worker process, calls it;
it should only list what it will read, not read it) and returns a dict (or an object with these attributes):
    train        a map-style dataset: len(train), train[i] -> (input, target)
    class_names  classification: the class names, in label order; multilabel: the label names
    target_names regression, optional: a name per target column (default: 'target', or target0, target1, ...)
    val          optional: a map-style dataset for validation (else data.val_fraction is split off)
An input is an image, a PIL image or an array (H, W) / (H, W, C) with C 1 or 3: uint8 (0..255) or float in
[0, 1], or a feature vector, a 1-D array of numbers. The target is the task's: an int in [0, len(class_names))
(classification), a number or a 1-D array of numbers (regression), a 1-D array of 0/1 per label (multilabel).
With data.image_size, images are resized (PIL or uint8 arrays). An exception raised while reading a sample is
a bad sample (data.on_error decides), named by its index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hvdtrain.data.sharding import epoch_order
from hvdtrain.data.source import SampleError
from hvdtrain.errors import DataError
from hvdtrain.imports import import_by_path


class UserSource:
    """A user's map-style dataset as a source (see hvdtrain/data/source.py). Pickles as its import path: a
    worker process calls the builder again rather than receiving the dataset object."""

    on_disk = True  # reads run the user's code: they can fail mid-epoch

    def __init__(self, cfg: Any, part: str, dataset: Any, num_classes: int, task: str = "classification") -> None:
        self.cfg, self.part, self.dataset, self.num_classes, self.task = cfg, part, dataset, num_classes, task
        self.size = tuple(cfg.image_size) if cfg.image_size else None
        first = self._image(0)
        self.dtype = first.dtype
        self.image_shape: tuple[int, ...] = tuple(first.shape)  # (H, W, C), or (F,) for feature vectors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "dataset"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.dataset = _part(_build(self.cfg), self.part, self.cfg.name)

    def describe(self, index: int) -> str:
        return f"{self.cfg.name} {self.part}[{index}]"

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        return epoch_order(len(self), seed, epoch, shuffle)

    def _item(self, index: int) -> tuple[Any, Any]:
        try:
            item = self.dataset[index]
        except Exception as exc:  # the user's reader failed on this sample
            raise SampleError(self.describe(index), f"{type(exc).__name__}: {exc}") from None
        if not isinstance(item, Sequence) or len(item) != 2:
            raise DataError(f"data.name={self.cfg.name}: {self.part}[{index}] is a {type(item).__name__}, not an "
                            "(input, target) pair: return (input, target) from __getitem__")
        return item[0], item[1]

    def _image(self, index: int) -> np.ndarray:
        return self._as_array(self._item(index)[0], index)

    def _as_array(self, image: Any, index: int) -> np.ndarray:
        what = f"data.name={self.cfg.name}: {self.part}[{index}]"
        if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
            from PIL import Image

            image = image.convert("L" if image.mode in ("L", "1") else "RGB")
            if self.size is not None:
                image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            image = np.asarray(image, dtype=np.uint8)
        x = np.asarray(image)
        if x.ndim == 1:  # a feature vector
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
                raise DataError(f"{what}: a feature vector of dtype {x.dtype}: return numbers")
            return x.astype(np.float32)
        if x.ndim == 2:
            x = x[..., None]
        if x.ndim != 3 or x.shape[2] not in (1, 3):
            raise DataError(f"{what}: image has shape {x.shape}: return (H, W), (H, W, 1) or (H, W, 3)")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.floating):
                raise DataError(f"{what}: image has dtype {x.dtype}: return uint8 pixels or floats in [0, 1]")
            x = x.astype(np.float32)
        if self.size is not None and x.shape[:2] != self.size:
            if x.dtype != np.uint8:
                raise DataError(f"{what}: a float image of {x.shape[0]}x{x.shape[1]} cannot be resized to "
                                f"data.image_size: return uint8 pixels or PIL images, or images of that size")
            from PIL import Image

            resized = Image.fromarray(x[..., 0] if x.shape[2] == 1 else x).resize(
                (self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            x = np.asarray(resized, dtype=np.uint8).reshape(*self.size, x.shape[2])
        return x

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(indices), *self.image_shape), dtype=self.dtype)
        labels = (np.empty(len(indices), dtype=np.int64) if self.task == "classification" else
                  np.empty((len(indices), self.num_classes), dtype=np.float32))
        for i, index in enumerate(np.asarray(indices, dtype=np.int64)):
            image, label = self._item(int(index))
            x = self._as_array(image, int(index))
            if x.shape != self.image_shape or x.dtype != self.dtype:
                raise SampleError(self.describe(int(index)), f"a {x.dtype} input of {list(x.shape)}, but the first "
                                  f"is {self.dtype} {list(self.image_shape)}; set data.image_size=[H, W] to resize")
            images[i], labels[i] = x, self._target(label, int(index))
        return images, labels

    def _target(self, label: Any, index: int) -> Any:
        """The sample's target, checked against the task (see the module docstring)."""
        what = f"data.name={self.cfg.name}: {self.part}[{index}]"
        if self.task == "classification":
            if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
                raise DataError(f"{what} has label {label!r}: labels are ints in [0, {self.num_classes}) (one per "
                                "class name)")
            return int(label)
        try:
            target = np.asarray(label, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            target = np.zeros(0)
        valid = np.ndim(label) <= 1 and len(target) == self.num_classes and bool(np.isfinite(target).all())
        if self.task == "multilabel" and not np.isin(target, (0.0, 1.0)).all():
            valid = False
        if not valid:
            kind = ("a number or 1-D array of" if self.task == "regression" else "a 1-D array of 0/1, one per label: "
                    "") + f" {self.num_classes} value(s)"
            raise DataError(f"{what} has target {label!r}: task={self.task} needs {kind}, the same for every sample")
        return target


def _build(cfg: Any) -> Any:
    builder = import_by_path(cfg.name, f"data.name={cfg.name!r}", DataError)
    if not callable(builder):
        raise DataError(f"data.name={cfg.name!r} names a {type(builder).__name__}, not a function: name a function "
                        "build(data_cfg)")
    return builder(cfg)


def _part(built: Any, key: str, name: str) -> Any:
    value = built.get(key) if isinstance(built, dict) else getattr(built, key, None)
    if key == "train" and value is None:
        raise DataError(f"data.name={name!r} returned no 'train' dataset: return "
                        "dict(train=..., class_names=[...], val=None)")
    if value is not None and not (hasattr(value, "__len__") and hasattr(value, "__getitem__")):
        raise DataError(f"data.name={name!r}: '{key}' is a {type(value).__name__}, not a map-style dataset: give it "
                        "__len__ and __getitem__(i) -> (input, target)")
    return value


def _get(built: Any, key: str) -> Any:
    return built.get(key) if isinstance(built, dict) else getattr(built, key, None)


def open_user_dataset(cfg: Any, task: str = "classification") -> tuple[UserSource, UserSource | None,
                                                                        tuple[str, ...]]:
    """data.name=package.module:function: the user's training and validation sets and the names of the model's
    outputs (classes, labels or targets)."""
    built = _build(cfg)
    train = _part(built, "train", cfg.name)
    if len(train) == 0:
        raise DataError(f"data.name={cfg.name!r}: the training set is empty: return a dataset with samples")
    if task == "regression":
        names = _get(built, "target_names")
        if not names:
            first = train[0]
            width = int(np.size(first[1])) if isinstance(first, Sequence) and len(first) == 2 else 1
            names = ["target"] if width == 1 else [f"target{i}" for i in range(width)]
    else:
        names = _get(built, "class_names")
    if not names or isinstance(names, str):
        kind = "class_names=['cat', 'dog', ...]" if task == "classification" else "class_names=['label0', ...]"
        raise DataError(f"data.name={cfg.name!r} returned no class_names (task={task}): return "
                        f"dict(train=..., {kind})")
    val = _part(built, "val", cfg.name)
    train_source = UserSource(cfg, "train", train, len(names), task)
    val_source = UserSource(cfg, "val", val, len(names), task) if val is not None and len(val) else None
    return train_source, val_source, tuple(str(n) for n in names)
