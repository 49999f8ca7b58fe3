"""The augmentation kernel on TensorFlow tensors (the math lives once in hvdtrain/augment/kernel.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from hvdtrain.augment import native
from hvdtrain.augment.kernel import ArrayOps, apply_batch
from hvdtrain.augment.pipeline import DeviceAugment
from hvdtrain.augment.standardize import Standardization
from hvdtrain.config import AugmentConfig


def _nearest_affine(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """fill_mode=nearest with TF's projective-transform kernel, whose NEAREST fill clamps each bilinear
    neighbour to the edge: the same as SciPy clamping the coordinate."""
    m = tf.cast(matrices, tf.float32)
    zeros = tf.zeros_like(m[:, 0, 0])
    # The kernel maps output (x=col, y=row) to input (x, y); our matrices map (row, col) to (row, col).
    transforms = tf.stack([m[:, 1, 1], m[:, 1, 0], m[:, 1, 2], m[:, 0, 1], m[:, 0, 0], m[:, 0, 2], zeros, zeros],
                          axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")


TF_OPS = ArrayOps(
    xp=tnp,
    take_rows=lambda table, idx: tf.gather(table, idx, axis=0),
    image_min=lambda x: tf.reduce_min(x, axis=(1, 2, 3), keepdims=True),
    image_max=lambda x: tf.reduce_max(x, axis=(1, 2, 3), keepdims=True),
    nearest_affine=_nearest_affine,
)


def apply_transforms(images: Any, params: Sequence[dict[str, Any]], config: AugmentConfig) -> Any:
    """Keras `apply_transform` semantics for a NHWC float batch; numpy in gives numpy out. Numpy batches go
    to the shared native kernel unless `augment.kernel=framework` (or it cannot be built, with `auto`)."""
    if native.use_native(images, config):
        return native.apply_transforms(images, params, config)
    as_numpy = isinstance(images, np.ndarray)
    tensor = tf.convert_to_tensor(images, dtype=tf.float32)
    out = apply_batch(TF_OPS, tensor, params, config.fill_mode, config.cval)
    return out.numpy() if as_numpy else out


def standardize_tensor(x: tf.Tensor, s: Standardization) -> tf.Tensor:
    """The standardisation `s` (Keras' order, as hvdtrain/augment/standardize.py) on a float32 NHWC tensor: device
    augmentation and the exported models use this one. Constants are made here, inside a trace when there is one
    (tf2onnx would take a tensor captured from outside for a second input)."""
    if s.rescale is not None:
        x = x * s.rescale
    if s.samplewise_center:
        x = x - tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
    if s.samplewise_std_normalization:  # the population std, as numpy's
        x = x / (tf.math.reduce_std(x, axis=(1, 2, 3), keepdims=True) + s.epsilon)
    if s.mean is not None:
        x = x - tf.constant(s.mean, tf.float32)
    if s.divisor is not None:
        x = x / tf.constant(s.divisor, tf.float32)
    return x


def augment_on_device(images: tf.Tensor, work: DeviceAugment, config: AugmentConfig) -> tf.Tensor:
    """augment.device=gpu: a batch's random transforms and standardisation with TensorFlow's ops, eagerly, on the
    device TensorFlow places them on (the rank's GPU when it has one)."""
    out = apply_batch(TF_OPS, images, work.transforms, config.fill_mode, config.cval)
    return standardize_tensor(out, Standardization.of(config, work.stats)) if config.standardizes else out
