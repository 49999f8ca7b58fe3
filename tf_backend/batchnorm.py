"""BatchNorm across Horovod ranks for Keras 3 models (docs/batchnorm.md).

- `sync_statistics`: every BatchNormalization layer's moving mean and variance made identical on every rank,
  averaged over ranks or taken from rank 0 (before every evaluation, checkpoint and final save).
- `SyncBatchNormalization` (model.sync_batchnorm): the batch statistics of a training call computed over the
  global batch, from per-rank sums reduced with Horovod's allreduce, whose registered gradient is the
  allreduce of the gradient, so the backward pass is BatchNorm's over the global batch. Horovod's own
  `hvd.SyncBatchNormalization` passes `fused=` to Keras' BatchNormalization, which Keras 3 no longer accepts.
"""

from __future__ import annotations

from typing import Any

import horovod.tensorflow as hvd
import keras
import tensorflow as tf

from hvdtrain.errors import ConfigError


class SyncBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training-time statistics cover every rank's batch (Keras' semantics
    otherwise: the moving variance takes the biased batch variance)."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if not training or not self.trainable:
            return super().call(inputs, training=False, mask=mask)
        x = tf.cast(inputs, tf.float32)  # statistics in fp32 whatever the compute precision
        axis = self.axis if self.axis >= 0 else len(x.shape) + self.axis
        axes = [i for i in range(len(x.shape)) if i != axis]
        shape = [1] * len(x.shape)
        shape[axis] = -1
        local = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
        total = hvd.allreduce(local, op=hvd.Sum)
        mean = hvd.allreduce(tf.reduce_sum(x, axes), op=hvd.Sum) / total
        centred = x - tf.reshape(mean, shape)
        var = hvd.allreduce(tf.reduce_sum(tf.square(centred), axes), op=hvd.Sum) / total
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + tf.stop_gradient(mean) * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + tf.stop_gradient(var) * (1.0 - momentum))
        out = centred * tf.reshape(tf.math.rsqrt(var + self.epsilon), shape)
        if self.scale:
            out = out * tf.reshape(tf.cast(self.gamma, tf.float32), shape)
        if self.center:
            out = out + tf.reshape(tf.cast(self.beta, tf.float32), shape)
        return tf.cast(out, self.compute_dtype)


def with_sync_batchnorm(model: keras.Model, keep: str = "") -> keras.Model:
    """A copy of a Sequential or functional `model` with every BatchNormalization replaced by a
    SyncBatchNormalization, holding the same weights. Layers keep the attribute named `keep` (if set)."""
    functional = type(model).__name__ == "Functional" or isinstance(model, keras.Sequential)
    if not functional:  # Keras' clone_model rebuilds only these from their graph
        raise ConfigError("model.sync_batchnorm=true: the Keras model is a subclassed model, whose layers cannot be "
                          "replaced: build it as a Sequential or functional model, or set model.sync_batchnorm=false")

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        cls = SyncBatchNormalization if type(layer) is keras.layers.BatchNormalization else type(layer)
        new = cls.from_config(layer.get_config())
        if keep and hasattr(layer, keep):
            setattr(new, keep, getattr(layer, keep))
        return new

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of the model, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def sync_statistics(model: keras.Model, mode: str) -> int:
    """Makes the moving statistics identical on every rank (a collective): "average" over the ranks, or
    "rank0". Returns the number of BatchNormalization layers."""
    layers = batchnorm_layers(model)
    for i, layer in enumerate(layers):
        for name, var in (("mean", layer.moving_mean), ("variance", layer.moving_variance)):
            value = tf.convert_to_tensor(var)
            if mode == "average":
                var.assign(hvd.allreduce(value, op=hvd.Average, name=f"hvdtrain.bn.{i}.{name}"))
            else:
                var.assign(hvd.broadcast(value, root_rank=0, name=f"hvdtrain.bn.{i}.{name}"))
    return len(layers)
