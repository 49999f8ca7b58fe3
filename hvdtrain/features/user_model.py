"""User models named by import path (`model.name=package.module:function`), shared by both backends.

The function is called as `function(model_cfg, input_shape, num_classes)` with `input_shape` = (H, W, C)
and returns a torch `nn.Module` (taking NCHW float32 batches) or a Keras model (taking NHWC batches),
matching the run's backend, that outputs logits of shape (batch, num_classes). For task=language_model,
`input_shape` is (block_size,) and `num_classes` the vocabulary size: the model takes int64 token ids
(windows, positions) and outputs next-token logits (windows, positions, vocabulary). Every broken contract is a
one-line ConfigError naming the fix; an exception raised inside the user's own code keeps its traceback.
This module imports no framework: each backend passes its model class and probes the model itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from hvdtrain.config import ModelConfig
from hvdtrain.errors import ConfigError
from hvdtrain.imports import import_by_path
from hvdtrain.registry import BACKENDS, other_backend

_Model = TypeVar("_Model")



def load_user_model(path: str) -> Callable[..., Any]:
    """`package.module:function` -> the function, imported and checked to take (model_cfg, input_shape,
    num_classes)."""
    if not ModelConfig.is_import_path(path):
        raise ConfigError(f"model.name={path!r} is not an import path 'package.module:function': write e.g. "
                          "model.name=my_pkg.models:build")
    attr = path.partition(":")[2]
    builder = import_by_path(path, f"model.name={path!r}", ConfigError)
    if not callable(builder):
        raise ConfigError(f"model.name={path!r} names a {type(builder).__name__} object, not a function: name a "
                          "function build(model_cfg, input_shape, num_classes)")
    try:
        inspect.signature(builder).bind(None, None, None)
    except TypeError:
        raise ConfigError(f"model.name={path!r} does not take (model_cfg, input_shape, num_classes): define it as "
                          f"def {attr}(model_cfg, input_shape, num_classes)") from None
    except ValueError:  # no signature to inspect (some builtins and C extensions): just call it
        pass
    return builder


def build_user_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int,
                     expected: type[_Model], backend: str) -> _Model:
    """Calls the builder; refuses what is not an `expected` (the model class of `backend`)."""
    model = load_user_model(cfg.name)(cfg, tuple(image_shape), num_classes)
    if not isinstance(model, expected):
        kind = type(model)
        other, mine = other_backend(backend), BACKENDS[backend]
        switch = f", or set backend={other.name}" if kind.__module__.split(".")[0] in other.framework_modules else ""
        raise ConfigError(f"model.name={cfg.name!r} returned a {kind.__qualname__} ({kind.__module__}), but "
                          f"backend={backend} trains {mine.framework} models: return {mine.model_kind}{switch}")
    return model


def check_logits(name: str, output: Any, batch_shape: tuple[int, ...], num_classes: int) -> None:
    """Refuses a probe output that is not one row of `num_classes` logits per image of the probe batch."""
    shape = getattr(output, "shape", None)
    if shape is None:
        raise ConfigError(f"model.name={name!r} returned a {type(output).__name__} for a batch of shape "
                          f"{list(batch_shape)}: return one tensor of logits, shape (batch, {num_classes})")
    if tuple(shape) != (batch_shape[0], num_classes):
        raise ConfigError(f"model.name={name!r} outputs shape {list(shape)} for a batch of shape {list(batch_shape)}, "
                          f"expected [{batch_shape[0]}, {num_classes}]: end the model with {num_classes} logits "
                          "(one per class, no softmax)")


def check_token_logits(name: str, output: Any, batch_shape: tuple[int, ...], vocab_size: int) -> None:
    """task=language_model: refuses a probe output that is not (windows, positions, vocabulary) logits."""
    expected = (*batch_shape, vocab_size)
    shape = getattr(output, "shape", None)
    if shape is None or tuple(shape) != expected:
        got = list(shape) if shape is not None else type(output).__name__
        raise ConfigError(f"model.name={name!r} outputs {got} for token ids of shape {list(batch_shape)}, expected "
                          f"{list(expected)}: return next-token logits (windows, positions, {vocab_size}) for "
                          "int64 token ids (windows, positions)")


def probe_failed(exc: BaseException, name: str, batch_shape: tuple[int, ...], layout: str) -> None:
    """Adds to an exception raised inside the user's model what hvdtrain was doing (the traceback stays)."""
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"hvdtrain: while running model.name={name!r} on a zero batch of shape {list(batch_shape)} "
                     f"({layout}, float32) to check its output")
