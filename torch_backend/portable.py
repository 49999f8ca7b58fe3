"""A built-in model's weights and buffers as a framework-neutral ("portable") list of arrays, and back: what
`hvdtrain convert` moves between the frameworks (tf_backend/portable.py is the other side).

The portable list holds every tensor that defines the model's outputs, in torch's module registration order
(each module's own: weight then bias; BatchNorm: weight, bias, running_mean, running_var), each in Keras'
layout:
- conv (out, in, kh, kw) -> (kh, kw, in, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1);
- linear (out, in) -> (in, out), and the first linear after a Flatten of a (C, H, W) feature map also has its
  inputs reordered from torch's C-H-W flattening to Keras' H-W-C;
- embeddings as they are; LayerNorm as Keras' gamma, beta (gpt: tf_backend/gpt.py lists its variables in this
  order);
- BatchNorm as Keras' gamma, beta, moving_mean, moving_variance. `num_batches_tracked` has no Keras
  counterpart: it is left out, and set on import to a count the caller gives (only momentum=None reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # BatchNorm2d, and torch_backend.batchnorm's synchronised one

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Slot:
    """One portable tensor: where it lives in the model and how its layout maps to Keras'."""

    name: str                 # torch's state name, for messages
    tensor: torch.Tensor
    to_keras: Transform
    from_keras: Transform

    def portable(self) -> np.ndarray:
        return np.ascontiguousarray(self.to_keras(self.tensor.detach().cpu().float().numpy()))


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _dense_transforms(flattened: tuple[int, ...] | None) -> tuple[Transform, Transform]:
    """(out, in) <-> (in, out); after a Flatten of (C, H, W), inputs C-H-W (torch) <-> H-W-C (Keras)."""
    if flattened is None or len(flattened) != 3:
        return (lambda w: w.T), (lambda a: a.T)
    channels, height, width = flattened

    def to_keras(w: np.ndarray) -> np.ndarray:
        per_pixel = w.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
        return np.asarray(per_pixel.reshape(w.shape[0], -1).T)

    def from_keras(a: np.ndarray) -> np.ndarray:
        per_channel: np.ndarray = a.T.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)
        return per_channel.reshape(a.shape[1], -1)

    return to_keras, from_keras


def _flatten_inputs(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[int, tuple[int, ...]]:
    """The per-sample shape reaching each Flatten (by module id), from one forward pass of a zero image in eval
    mode (nothing in the model changes)."""
    seen: dict[int, tuple[int, ...]] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.setdefault(id(module), tuple(inputs[0].shape[1:]))  # a hook returning a value would replace output

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Flatten)]
    if not hooks:
        return seen
    height, width, channels = image_shape
    first = next(model.parameters())
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, height, width, device=first.device, dtype=first.dtype))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return seen


def _slots(model: nn.Module, image_shape: tuple[int, int, int], architecture: str) -> list[_Slot]:
    flat_inputs = _flatten_inputs(model, image_shape)
    slots: list[_Slot] = []
    pending: tuple[int, ...] | None = None  # the shape flattened before the next Linear
    for path, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)] + \
              [n for n, _ in module.named_buffers(recurse=False)]
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.Flatten):
            pending = flat_inputs.get(id(module))
        elif isinstance(module, nn.Conv2d):
            if module.groups == 1:
                to_keras, from_keras = (lambda w: w.transpose(2, 3, 1, 0)), (lambda a: a.transpose(3, 2, 0, 1))
            elif module.groups == module.in_channels == module.out_channels:
                to_keras, from_keras = (lambda w: w.transpose(2, 3, 0, 1)), (lambda a: a.transpose(2, 3, 0, 1))
            else:
                raise ValueError(f"{architecture}: {prefix}weight is a grouped conv (groups={module.groups}) that "
                                 "has no Keras layout here")
            slots.append(_Slot(prefix + "weight", module.weight, to_keras, from_keras))
            if module.bias is not None:
                slots.append(_Slot(prefix + "bias", module.bias, _same, _same))
        elif isinstance(module, nn.Linear):
            to_keras, from_keras = _dense_transforms(pending)
            pending = None
            slots.append(_Slot(prefix + "weight", module.weight, to_keras, from_keras))
            if module.bias is not None:
                slots.append(_Slot(prefix + "bias", module.bias, _same, _same))
        elif isinstance(module, nn.Embedding):  # gpt's token and position tables: (rows, width) in both
            slots.append(_Slot(prefix + "weight", module.weight, _same, _same))
        elif isinstance(module, nn.LayerNorm):  # Keras' gamma and beta
            slots.append(_Slot(prefix + "weight", module.weight, _same, _same))
            if module.bias is not None:
                slots.append(_Slot(prefix + "bias", module.bias, _same, _same))
        elif isinstance(module, _BatchNorm):
            if not module.affine or module.running_mean is None or module.running_var is None:
                raise ValueError(f"{architecture}: BatchNorm {path} without affine parameters or running "
                                 "statistics has no Keras counterpart here")
            slots += [_Slot(prefix + name, tensor, _same, _same) for name, tensor in
                      (("weight", module.weight), ("bias", module.bias), ("running_mean", module.running_mean),
                       ("running_var", module.running_var))]
        elif own:
            raise ValueError(f"{architecture}: {type(module).__name__} {path or '(the model)'} holds "
                             f"{', '.join(own)}, which have no portable layout")
    return slots


def portable_arrays(model: nn.Module, image_shape: tuple[int, int, int],
                    architecture: str = "model") -> list[np.ndarray]:
    """The model's weights and BatchNorm statistics in the portable order and Keras layout (float32 copies)."""
    return [slot.portable() for slot in _slots(model, image_shape, architecture)]


def portable_names(model: nn.Module, image_shape: tuple[int, int, int], architecture: str = "model") -> list[str]:
    """torch's state names of the portable tensors, in their order."""
    return [slot.name for slot in _slots(model, image_shape, architecture)]


@torch.no_grad()
def load_portable(model: nn.Module, arrays: list[np.ndarray], image_shape: tuple[int, int, int],
                  architecture: str = "model", batches_tracked: int = 0) -> int:
    """Sets the model's weights and BatchNorm statistics from portable `arrays` (checked against this model's
    count and shapes first: nothing changes on a mismatch), and every BatchNorm's num_batches_tracked to
    `batches_tracked`. Returns the number of tensors set."""
    slots = _slots(model, image_shape, architecture)
    if len(arrays) != len(slots):
        raise ValueError(f"{architecture}: the source holds {len(arrays)} tensors, this torch model "
                         f"{len(slots)}: they are not the same architecture")
    values = []
    for index, (slot, array) in enumerate(zip(slots, arrays, strict=True)):
        expected = slot.portable().shape
        if tuple(array.shape) != expected:
            raise ValueError(f"{architecture}: tensor {index} ({slot.name}) is {list(expected)} in Keras layout "
                             f"here but {list(array.shape)} in the source: not the same architecture")
        values.append(slot.from_keras(np.asarray(array, dtype=np.float32)))
    for slot, value in zip(slots, values, strict=True):
        slot.tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.num_batches_tracked is not None:
            module.num_batches_tracked.fill_(batches_tracked)
    return len(slots)


def exact_float32() -> None:
    """Full float32 matmuls and convolutions (no TF32 on GPUs), for comparing outputs across frameworks."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
