"""The augmentation kernel on PyTorch tensors (the math lives once in hvdtrain/augment/kernel.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hvdtrain.augment.kernel import ArrayOps, apply_batch
from hvdtrain.config import AugmentConfig

TORCH_OPS = ArrayOps(
    xp=torch,
    take_rows=lambda table, idx: torch.index_select(table, 0, idx),
    image_min=lambda x: torch.amin(x, dim=(1, 2, 3), keepdim=True),
    image_max=lambda x: torch.amax(x, dim=(1, 2, 3), keepdim=True),
    flip=lambda x, axis: torch.flip(x, dims=(axis,)),
)


def apply_transforms(images: Any, params: Sequence[dict[str, Any]], config: AugmentConfig) -> Any:
    """Keras `apply_transform` semantics for a NHWC float batch; numpy in gives numpy out."""
    as_numpy = isinstance(images, np.ndarray)
    tensor = torch.as_tensor(images, dtype=torch.float32)
    out = apply_batch(TORCH_OPS, tensor, params, config.fill_mode, config.cval)
    return out.numpy() if as_numpy else out
