"""A built-in Keras model's weights and BatchNorm statistics as the framework-neutral ("portable") list of
arrays that torch_backend/portable.py defines (torch's module order, Keras' layout), and back.

Keras' layout is the portable one, so only the order needs care: the layers in the order the builder created
them (tf_backend.models.CREATION_INDEX, which follows torch's module registration), each layer's variables in
a fixed order: kernel, bias; BatchNorm: gamma, beta, moving_mean, moving_variance.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tf_backend.models import CREATION_INDEX

# By class, subclasses included (tf_backend.batchnorm's synchronised BatchNormalization).
_VARIABLES = {keras.layers.Conv2D: ("kernel", "bias"), keras.layers.DepthwiseConv2D: ("kernel", "bias"),
              keras.layers.Dense: ("kernel", "bias"),
              keras.layers.BatchNormalization: ("gamma", "beta", "moving_mean", "moving_variance")}


def _variables(model: keras.Model, architecture: str) -> list[Any]:
    from tf_backend.gpt import GPTNetwork, torch_named_variables

    if any(isinstance(layer, GPTNetwork) for layer in model.layers):  # in torch's order, in Keras' layout
        return [variable for variable, _ in torch_named_variables(model).values()]
    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True) if layer.weights]
    unstamped = [layer.name for layer in layers if not hasattr(layer, CREATION_INDEX)]
    if unstamped:
        raise ValueError(f"{architecture}: layer {unstamped[0]} has no creation order: build the model with "
                         "tf_backend.models.build_model (a built-in architecture)")
    out = []
    for layer in sorted(layers, key=lambda la: getattr(la, CREATION_INDEX)):
        names = next((names for cls, names in _VARIABLES.items() if isinstance(layer, cls)), None)
        if names is None:
            raise ValueError(f"{architecture}: {type(layer).__name__} layer {layer.name} has no portable layout")
        by_name = {v.name: v for v in layer.weights}
        ordered = [by_name.pop(name) for name in names if name in by_name]
        if by_name:
            raise ValueError(f"{architecture}: layer {layer.name} holds {', '.join(by_name)}, which have no "
                             "portable layout")
        out += ordered
    return out


def portable_arrays(model: keras.Model, image_shape: tuple[int, int, int],
                    architecture: str = "model") -> list[np.ndarray]:
    """The model's weights and BatchNorm statistics in the portable order and layout (float32 copies).
    `image_shape` is unused (Keras' layout is the portable one); it keeps the signature torch's."""
    return [np.array(keras.ops.convert_to_numpy(v), dtype=np.float32) for v in _variables(model, architecture)]


def portable_names(model: keras.Model, image_shape: tuple[int, int, int], architecture: str = "model") -> list[str]:
    """Keras' variable paths of the portable tensors, in their order."""
    return [v.path for v in _variables(model, architecture)]


def load_portable(model: keras.Model, arrays: list[np.ndarray], image_shape: tuple[int, int, int],
                  architecture: str = "model", batches_tracked: int = 0) -> int:
    """Sets the model's weights and BatchNorm statistics from portable `arrays` (checked against this model's
    count and shapes first: nothing changes on a mismatch). `batches_tracked` (torch's BatchNorm counter) has
    no Keras counterpart. Returns the number of tensors set."""
    variables = _variables(model, architecture)
    if len(arrays) != len(variables):
        raise ValueError(f"{architecture}: the source holds {len(arrays)} tensors, this Keras model "
                         f"{len(variables)}: they are not the same architecture")
    for index, (var, array) in enumerate(zip(variables, arrays, strict=True)):
        if tuple(array.shape) != tuple(var.shape):
            raise ValueError(f"{architecture}: tensor {index} ({var.path}) is {list(var.shape)} here but "
                             f"{list(array.shape)} in the source: not the same architecture")
    for var, array in zip(variables, arrays, strict=True):
        var.assign(np.asarray(array, dtype=var.dtype))
    return len(variables)


def exact_float32() -> None:
    """Full float32 matmuls and convolutions (no TF32 on GPUs), for comparing outputs across frameworks."""
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
