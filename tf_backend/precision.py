"""Compute precision on Keras 3, one object per choice: the layers' dtype policy and loss scaling.

The step never branches on the precision's name; it asks the object. Keras' mixed policies compute in
bf16/fp16 and keep fp32 variables. fp16 wraps the optimizer in Keras' `LossScaleOptimizer`, which, given the
allreduced gradients, unscales them, skips the step and halves the scale if any is inf/NaN, and clips (the
inner optimizer's `global_clipnorm`) only after unscaling: Horovod's synchronize -> unscale -> clip -> step
order, with the synchronisation being the step's grouped allreduce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from hvdtrain.backend import StepPolicy


class Precision:
    """fp32: float32 layers, no loss scaling."""

    dtype_policy = "float32"

    def __init__(self, policy: StepPolicy) -> None:
        self.policy = policy

    @contextlib.contextmanager
    def build_context(self) -> Iterator[None]:
        """Where the model's layers are created: they take the dtype policy in force then. Keras' policy is
        global, so it is restored afterwards."""
        keras.mixed_precision.set_dtype_policy(self.dtype_policy)
        try:
            yield
        finally:
            keras.mixed_precision.set_dtype_policy("float32")

    def wrap(self, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        return optimizer

    def scale_loss(self, optimizer: keras.optimizers.Optimizer, loss: Any) -> Any:
        return loss

    def loss_scale(self, optimizer: keras.optimizers.Optimizer) -> float | None:
        return None


class BF16(Precision):
    """mixed_bfloat16: no loss scaling (bf16 has fp32's range)."""

    dtype_policy = "mixed_bfloat16"


class FP16(Precision):
    """mixed_float16 with Keras' dynamic loss scaling."""

    dtype_policy = "mixed_float16"

    def wrap(self, optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
        return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=self.policy.loss_scale_init,
                                                   dynamic_growth_steps=self.policy.loss_scale_growth_interval)

    def scale_loss(self, optimizer: keras.optimizers.Optimizer, loss: Any) -> Any:
        return optimizer.scale_loss(loss)

    def loss_scale(self, optimizer: keras.optimizers.Optimizer) -> float | None:
        return float(np.asarray(optimizer.dynamic_scale))


PRECISIONS: dict[str, type[Precision]] = {"fp32": Precision, "bf16": BF16, "fp16": FP16}


def make_precision(policy: StepPolicy) -> Precision:
    return PRECISIONS[policy.precision](policy)
