"""PyTorch versions of the built-in models; tf_backend/models.py builds the same layers for Keras."""

from __future__ import annotations

from torch import nn

from hvdtrain.config import ModelConfig


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """`mlp` or `cnn` for NCHW input of `image_shape` given as (H, W, C)."""
    height, width, channels = image_shape
    layers: list[nn.Module] = []
    if cfg.name == "cnn":
        for out in cfg.channels:
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
    layers.append(nn.Flatten())
    features = height * width * channels
    for units in cfg.hidden_units:
        layers += [nn.Linear(features, units), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        features = units
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
