"""Your own dataset by import path: `data.name: my_pkg.data:build` (docs/data.md has a worked example).

`build(data_cfg)` is called with the run's `data` section (every rank, and every worker process, calls it;
it should only list what it will read, not read it) and returns a dict (or an object with these attributes):
    train        a map-style dataset: len(train), train[i] -> (image, label)
    class_names  the class names, in label order
    val          optional: a map-style dataset for validation (else data.val_fraction is split off)
An image is a PIL image or an array (H, W) / (H, W, C) with C 1 or 3: uint8 (0..255) or float in [0, 1];
a label is an int in [0, len(class_names)). With data.image_size, images are resized (PIL or uint8 arrays).
An exception raised while reading a sample is a bad sample (data.on_error decides), named by its index.
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

    def __init__(self, cfg: Any, part: str, dataset: Any, num_classes: int) -> None:
        self.cfg, self.part, self.dataset, self.num_classes = cfg, part, dataset, num_classes
        self.size = tuple(cfg.image_size) if cfg.image_size else None
        first = self._image(0)
        self.dtype = first.dtype
        self.image_shape: tuple[int, int, int] = tuple(first.shape)

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
                            "(image, label) pair: return (image, label) from __getitem__")
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
        labels = np.empty(len(indices), dtype=np.int64)
        for i, index in enumerate(np.asarray(indices, dtype=np.int64)):
            image, label = self._item(int(index))
            x = self._as_array(image, int(index))
            if x.shape != self.image_shape or x.dtype != self.dtype:
                raise SampleError(self.describe(int(index)), f"a {x.dtype} image of {list(x.shape)}, but the first "
                                  f"is {self.dtype} {list(self.image_shape)}; set data.image_size=[H, W] to resize")
            if not isinstance(label, (int, np.integer)) or not 0 <= int(label) < self.num_classes:
                raise DataError(f"data.name={self.cfg.name}: {self.part}[{index}] has label {label!r}: labels are "
                                f"ints in [0, {self.num_classes}) (one per class name)")
            images[i], labels[i] = x, int(label)
        return images, labels


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
                        "__len__ and __getitem__(i) -> (image, label)")
    return value


def open_user_dataset(cfg: Any) -> tuple[UserSource, UserSource | None, tuple[str, ...]]:
    """data.name=package.module:function: the user's training and validation sets and class names."""
    built = _build(cfg)
    names = built.get("class_names") if isinstance(built, dict) else getattr(built, "class_names", None)
    if not names or isinstance(names, str):
        raise DataError(f"data.name={cfg.name!r} returned no class_names: return "
                        "dict(train=..., class_names=['cat', 'dog', ...])")
    train = _part(built, "train", cfg.name)
    if len(train) == 0:
        raise DataError(f"data.name={cfg.name!r}: the training set is empty: return a dataset with samples")
    val = _part(built, "val", cfg.name)
    train_source = UserSource(cfg, "train", train, len(names))
    val_source = UserSource(cfg, "val", val, len(names)) if val is not None and len(val) else None
    return train_source, val_source, tuple(str(n) for n in names)
