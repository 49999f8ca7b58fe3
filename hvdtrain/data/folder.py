"""`data.name: image_folder`: a folder of class sub-folders, streamed (only the file list is in memory).

Layouts (class names are the sub-folder names, sorted; hidden folders and files are ignored):
    DIR/<class>/<image>                      split by data.val_fraction
    DIR/train/<class>/<image> and DIR/val/<class>/<image> (or DIR/validation/...)   the split is given
Images of any size are resized to data.image_size; without it every image must have the first one's size.
The channel count comes from the first image (grey: 1, anything else: 3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.data.images import IMAGE_SUFFIXES, channels_of, decode_image, probe_image
from hvdtrain.data.sharding import epoch_order
from hvdtrain.data.source import PathList, SampleError
from hvdtrain.errors import DataError

VAL_FOLDERS = ("val", "validation")


@dataclass(frozen=True)
class FolderListing:
    """The files of one class-folder tree, in class then name order, with their class indices."""

    files: Sequence[str]  # a PathList: compact in memory and in pickles
    labels: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True)
class FolderLayout:
    """What DIR holds: a training tree and, when DIR has train/ and val/, a validation tree."""

    train: FolderListing
    val: FolderListing | None


def list_classes(root: Path, shown: str) -> FolderListing:
    """The images under root/<class>/ (`shown` is how the folder is named in messages)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{shown} has no class sub-folders: put each class's images in {shown}/<class name>/")
    parts: list[PathList] = []
    counts: list[int] = []
    for name in classes:
        # One class at a time, as plain names (os.scandir): listing a million files builds no Path objects.
        with os.scandir(root / name) as entries:
            found = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                           and not e.name.startswith(".") and e.is_file())
        if not found:
            raise DataError(f"{shown}: class folder '{name}' has no .png/.jpg/.jpeg images: add images or remove "
                            "the folder")
        parts.append(PathList((os.path.join(name, f) for f in found), prefix=os.path.join(root, "")))
        counts.append(len(found))
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return FolderListing(PathList.concat(parts), labels, tuple(classes))


def list_folder(path: str) -> FolderLayout:
    """The layout of data.path (see the module docstring), checked."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"data.path={path} does not exist: set data.path to a folder of class sub-folders "
                        "(or with train/ and val/ folders of them)")
    if not root.is_dir():
        raise DataError(f"data.path={path} is not a folder: point it at a folder with one sub-folder per class")
    val_dir = next((root / v for v in VAL_FOLDERS if (root / v).is_dir()), None)
    if not (root / "train").is_dir():
        if val_dir is not None:
            raise DataError(f"data.path={path} has {val_dir.name}/ but no train/ folder: add train/<class>/ "
                            "folders, or move the class folders up into data.path")
        return FolderLayout(list_classes(root, f"data.path={path}"), None)
    train = list_classes(root / "train", f"data.path={path}/train")
    if val_dir is None:
        raise DataError(f"data.path={path} has train/ but no val/ (or validation/) folder: add one with the same "
                        "class folders, or move the class folders up into data.path to split by data.val_fraction")
    val = list_classes(val_dir, f"data.path={path}/{val_dir.name}")
    if val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"data.path={path}: train/ and {val_dir.name}/ have different classes (only in train: "
                        f"{', '.join(only_train) or '-'}; only in {val_dir.name}: {', '.join(only_val) or '-'}): "
                        "give both the same class folders")
    return FolderLayout(train, val)


class FolderSource:
    """Image files decoded on demand (map-style; see hvdtrain/data/source.py)."""

    on_disk = True

    def __init__(self, listing: FolderListing, image_shape: tuple[int, int, int], resize: bool) -> None:
        self.files, self.labels = listing.files, listing.labels
        self.image_shape = image_shape
        self.size = image_shape[:2] if resize else None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        for i, index in enumerate(indices):
            image = decode_image(self.files[int(index)], self.size, self.image_shape[2], self.files[int(index)])
            if image.shape != self.image_shape:
                raise SampleError(self.files[int(index)], f"{image.shape[0]}x{image.shape[1]} pixels, but the "
                                  f"images are {self.image_shape[0]}x{self.image_shape[1]}; set "
                                  "data.image_size=[H, W] to resize them all")
            out[i] = image
        return out, self.labels[indices]

    def describe(self, index: int) -> str:
        return self.files[index]

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        return epoch_order(len(self), seed, epoch, shuffle)


def image_shape_of(first_file: str, image_size: tuple[int, int] | None) -> tuple[int, int, int]:
    """(H, W, C) of every image: data.image_size (or the first image's size) and the first image's channels."""
    height, width, mode = probe_image(first_file)
    if image_size is not None:
        height, width = image_size
    return height, width, channels_of(mode)


def open_image_folder(cfg: Any) -> tuple[FolderSource, FolderSource | None, tuple[str, ...]]:
    """data.name=image_folder: the training source, the validation source (train/ + val/ layout) and classes."""
    if not cfg.path:
        raise DataError("data.path is required for data.name=image_folder: set data.path=/path/to/folder")
    layout = list_folder(cfg.path)
    size = tuple(cfg.image_size) if cfg.image_size else None
    shape = image_shape_of(layout.train.files[0], size)
    train = FolderSource(layout.train, shape, resize=size is not None)
    val = FolderSource(layout.val, shape, resize=size is not None) if layout.val is not None else None
    return train, val, layout.train.classes
