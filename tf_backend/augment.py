"""The augmentation kernel on TensorFlow tensors (the math lives once in hvdtrain/augment/kernel.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from hvdtrain.augment.kernel import ArrayOps, apply_batch
from hvdtrain.config import AugmentConfig

TF_OPS = ArrayOps(
    xp=tnp,
    take_rows=lambda table, idx: tf.gather(table, idx, axis=0),
    image_min=lambda x: tf.reduce_min(x, axis=(1, 2, 3), keepdims=True),
    image_max=lambda x: tf.reduce_max(x, axis=(1, 2, 3), keepdims=True),
)


def apply_transforms(images: Any, params: Sequence[dict[str, Any]], config: AugmentConfig) -> Any:
    """Keras `apply_transform` semantics for a NHWC float batch; numpy in gives numpy out."""
    as_numpy = isinstance(images, np.ndarray)
    tensor = tf.convert_to_tensor(images, dtype=tf.float32)
    out = apply_batch(TF_OPS, tensor, params, config.fill_mode, config.cval)
    return out.numpy() if as_numpy else out
