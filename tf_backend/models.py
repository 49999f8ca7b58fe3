"""Keras 3 versions of the built-in models: the same layers and parameter counts as torch_backend/models.py.

Weights are initialised with PyTorch's default distributions (kernel and bias uniform in +-1/sqrt(fan_in)),
so that a config starts from statistically the same point on both backends.
"""

from __future__ import annotations

import math

import keras

from hvdtrain.config import ModelConfig


def _torch_like_init(fan_in: int) -> dict[str, keras.initializers.Initializer]:
    # PyTorch's kaiming_uniform(a=sqrt(5)) kernel init and its bias init both reduce to U(+-1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return {"kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            "bias_initializer": keras.initializers.RandomUniform(-bound, bound)}


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """`mlp` or `cnn` for NHWC input of `image_shape` (H, W, C)."""
    height, width, channels = image_shape
    layers: list[keras.layers.Layer] = [keras.Input(shape=image_shape)]
    if cfg.name == "cnn":
        for out in cfg.channels:
            layers += [keras.layers.Conv2D(out, 3, padding="same", **_torch_like_init(9 * channels)),
                       keras.layers.ReLU()]
            if min(height, width) >= 2:
                layers.append(keras.layers.MaxPooling2D(2))
                height, width = height // 2, width // 2
            channels = out
    layers.append(keras.layers.Flatten())
    features = height * width * channels
    for units in cfg.hidden_units:
        layers += [keras.layers.Dense(units, **_torch_like_init(features)), keras.layers.ReLU()]
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout))
        features = units
    layers.append(keras.layers.Dense(num_classes, **_torch_like_init(features)))
    return keras.Sequential(layers, name=cfg.name)
