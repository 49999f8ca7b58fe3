"""User models named by import path (`model.name=package.module:function`), for both backends.

The function is called as `function(model_cfg, input_shape, num_classes)` with `input_shape` = (H, W, C)
and returns a torch `nn.Module` (taking NCHW batches) or a Keras model (taking NHWC batches), matching the
run's backend.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from hvdtrain.config import ModelConfig
from hvdtrain.errors import ConfigError


def build_user_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int,
                     expected: type, framework: str) -> Any:
    """Imports and calls the builder; refuses what is not an `expected` (the backend's model class)."""
    module_name, _, attr = cfg.name.partition(":")
    try:
        builder: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"model.name={cfg.name!r} cannot be imported ({exc}): check the name and that its package "
                          "is on PYTHONPATH on every node") from None
    model = builder(cfg, image_shape, num_classes)
    if not isinstance(model, expected):
        raise ConfigError(f"model.name={cfg.name!r} returned {type(model).__name__}, not a {framework} model: return "
                          f"a {expected.__module__}.{expected.__name__} for this backend")
    return model
