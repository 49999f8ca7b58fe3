"""Keras 3 versions of the built-in models: the same layers, padding and parameter counts as
torch_backend/models.py.

Weights are initialised with PyTorch's default distributions (kernel and bias uniform in +-1/sqrt(fan_in)),
so that a config starts from statistically the same point on both backends. Strided convs pad one pixel on
every side and then convolve without padding, as torch's padding=1 does (Keras' "same" would pad only
bottom/right).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from hvdtrain.config import ModelConfig
from hvdtrain.features.user_model import build_user_model, check_logits, check_token_logits, probe_failed


def _torch_like_init(fan_in: int, bias: bool = True) -> dict[str, keras.initializers.Initializer]:
    # PyTorch's kaiming_uniform(a=sqrt(5)) kernel init and its bias init both reduce to U(+-1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    init = {"kernel_initializer": keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")}
    if bias:
        init["bias_initializer"] = keras.initializers.RandomUniform(-bound, bound)
    return init


def _head(x: keras.KerasTensor, features: int, cfg: ModelConfig, num_classes: int,
          output_name: str | None = None) -> keras.KerasTensor:
    for units in cfg.head_units():
        x = keras.layers.ReLU()(keras.layers.Dense(units, **_torch_like_init(features))(x))
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout)(x)
        features = units
    return keras.layers.Dense(num_classes, **_torch_like_init(features), name=output_name)(x)


def _conv_bn(x: keras.KerasTensor, cin: int, cout: int, kernel: int, stride: int = 1,
             depthwise: bool = False, names: tuple[str, str] | None = None) -> keras.KerasTensor:
    """Conv (no bias) + BatchNorm; `names`: the two layers' names (resnet50: torch's module paths)."""
    conv_name, bn_name = names if names is not None else (None, None)
    if stride > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2)(x)
    padding = "valid" if stride > 1 else "same"
    if depthwise:
        # torch's fan_in of a grouped conv is kernel x kernel; Keras would count kernel x kernel x channels.
        bound = 1.0 / kernel
        conv = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=False,
                                            depthwise_initializer=keras.initializers.RandomUniform(-bound, bound))
    else:
        conv = keras.layers.Conv2D(cout, kernel, strides=stride, padding=padding, name=conv_name,
                                   **_torch_like_init(kernel * kernel * cin, bias=False), use_bias=False)
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=bn_name)(conv(x))


def _plain(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    layers: list[keras.layers.Layer] = [keras.Input(shape=image_shape)]
    # Feature vectors (F,) are (1, 1, F) here for the head's sizes (mlp only: hvdtrain/training/setup.py checks).
    height, width, channels = image_shape if len(image_shape) == 3 else (1, 1, image_shape[0])
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
    for units in cfg.head_units():
        layers += [keras.layers.Dense(units, **_torch_like_init(features)), keras.layers.ReLU()]
        if cfg.dropout > 0:
            layers.append(keras.layers.Dropout(cfg.dropout))
        features = units
    layers.append(keras.layers.Dense(num_classes, **_torch_like_init(features)))
    return keras.Sequential(layers, name=cfg.name)


def _mobilenet(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=image_shape)
    height, width, channels = image_shape
    stem = cfg.scaled(cfg.channels[0])
    x = keras.layers.ReLU()(_conv_bn(inputs, channels, stem, 3))
    channels, size = stem, min(height, width)
    for out in (cfg.scaled(c) for c in cfg.channels):
        stride = 2 if size >= 4 else 1
        size = (size - 1) // stride + 1
        x = keras.layers.ReLU()(_conv_bn(x, channels, channels, 3, stride, depthwise=True))
        x = keras.layers.ReLU()(_conv_bn(x, channels, out, 1))
        channels = out
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, channels, cfg, num_classes), name="mobilenet")


def _resnet(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=image_shape)
    height, width, channels = image_shape
    widths = [cfg.scaled(w) for w in (16, 32, 64)]
    x = keras.layers.ReLU()(_conv_bn(inputs, channels, widths[0], 3))
    channels, size = widths[0], min(height, width)
    for stage, out in enumerate(widths):
        for block in range((cfg.depth - 2) // 6):
            stride = 2 if stage > 0 and block == 0 and size >= 4 else 1
            size = (size - 1) // stride + 1
            body = keras.layers.ReLU()(_conv_bn(x, channels, out, 3, stride))
            body = _conv_bn(body, out, out, 3)
            shortcut = _conv_bn(x, channels, out, 1, stride) if stride != 1 or channels != out else x
            x = keras.layers.ReLU()(keras.layers.Add()([body, shortcut]))
            channels = out
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, channels, cfg, num_classes), name="resnet")


RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # as torch_backend/models.py


def _resnet50(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """torchvision's resnet50 (v1.5), layer for layer as torch_backend's ResNet50, each conv and BatchNorm named
    by its torch module path (layer2.0.conv2...). Every stride-2 layer pads symmetrically, then runs "valid":
    the 7x7 stem pads 3, the 3x3 max-pool 1 (zeros: its inputs come out of a ReLU, so a zero never wins over
    torch's -inf padding), each stage's strided 3x3 conv 1; strided 1x1 shortcuts do not pad."""
    inputs = keras.Input(shape=image_shape)
    stem = cfg.scaled(64)
    x = keras.layers.ReLU()(_conv_bn(inputs, image_shape[2], stem, 7, 2, names=("conv1", "bn1")))
    x = keras.layers.MaxPooling2D(3, strides=2)(keras.layers.ZeroPadding2D(1)(x))
    channels = stem
    for index, (base, blocks) in enumerate(RESNET50_STAGES):
        width = cfg.scaled(base)
        for block in range(blocks):
            stride, prefix = (2 if index > 0 and block == 0 else 1), f"layer{index + 1}.{block}."
            body = keras.layers.ReLU()(_conv_bn(x, channels, width, 1, names=(prefix + "conv1", prefix + "bn1")))
            body = keras.layers.ReLU()(_conv_bn(body, width, width, 3, stride,
                                                names=(prefix + "conv2", prefix + "bn2")))
            body = _conv_bn(body, width, 4 * width, 1, names=(prefix + "conv3", prefix + "bn3"))
            shortcut = x if stride == 1 and channels == 4 * width else \
                _conv_bn(x, channels, 4 * width, 1, stride, names=(prefix + "downsample.0", prefix + "downsample.1"))
            x = keras.layers.ReLU()(keras.layers.Add()([body, shortcut]))
            channels = 4 * width
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, channels, cfg, num_classes, output_name="fc"), name="resnet50")


def _user_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int, tokens: bool = False) -> keras.Model:
    """The user's Keras model, called once on a zero batch (training=False): that builds a model given
    without an Input (otherwise it would have no variables to train yet) and checks that it maps NHWC
    images to `num_classes` logits (`tokens`: token ids to next-token logits)."""
    model = build_user_model(cfg, image_shape, num_classes, keras.Model, "tensorflow")
    batch = np.zeros((2, *image_shape), dtype="int64" if tokens else "float32")
    try:
        output = model(batch, training=False)
    except Exception as exc:
        probe_failed(exc, cfg.name, batch.shape, "NHWC")
        raise
    if tokens:
        check_token_logits(cfg.name, output, batch.shape, num_classes)
    else:
        check_logits(cfg.name, output, batch.shape, num_classes)
    return model


# Each layer a built-in builder creates carries its creation index under this attribute. The builders create
# layers in the order torch_backend/models.py registers its modules (a residual body before its shortcut), which
# Keras' functional `model.layers` does not keep (it sorts by graph depth); tf_backend/portable.py maps weights
# between the frameworks in this order.
CREATION_INDEX = "_hvdtrain_creation_index"


@contextlib.contextmanager
def _stamping_creation_order() -> Iterator[None]:
    """Every Keras layer created inside gets its creation index (stored on the layer: an id() could be reused)."""
    counter = itertools.count()
    original = keras.layers.Layer.__init__

    def init(self: keras.layers.Layer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not hasattr(self, CREATION_INDEX):
            setattr(self, CREATION_INDEX, next(counter))

    keras.layers.Layer.__init__ = init
    try:
        yield
    finally:
        keras.layers.Layer.__init__ = original


def build_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int, tokens: bool = False,
                seed: int = 0) -> keras.Model:
    """The model named by `cfg.name` for NHWC input of `image_shape` (H, W, C); a built-in one's layers carry
    their creation order (CREATION_INDEX)."""
    if ":" in cfg.name:
        return _user_model(cfg, image_shape, num_classes, tokens)
    if cfg.name == "gpt":  # image_shape: (block_size,) token windows; num_classes: the vocabulary
        from tf_backend.gpt import build_gpt

        return build_gpt(cfg, image_shape[0], num_classes, seed)
    builders = {"mobilenet": _mobilenet, "resnet": _resnet, "resnet50": _resnet50}
    with _stamping_creation_order():
        return builders.get(cfg.name, _plain)(cfg, image_shape, num_classes)
