"""Test helper: a dataset's sources read whole, as arrays."""

from __future__ import annotations

from types import SimpleNamespace

from hvdtrain.augment.pipeline import pixels
from hvdtrain.data import Dataset, read_all


def arrays(dataset: Dataset) -> SimpleNamespace:
    """Every sample of a small dataset as float32 pixels in [0, 1] (what the backends see), for assertions."""
    (x_train, y_train), (x_val, y_val) = read_all(dataset.train), read_all(dataset.val)
    return SimpleNamespace(x_train=pixels(x_train), y_train=y_train, x_val=pixels(x_val), y_val=y_val,
                           num_classes=dataset.num_classes, class_names=dataset.class_names)
