"""Compute precision on torch, one object per choice: autocast, loss scaling and Horovod's step order.

The step never branches on the precision's name; it asks the object. Every precision makes the optimizer
step in the order Horovod documents for loss scaling and clipping (examples/pytorch/pytorch_mnist.py):
wait for the averaged gradients (`synchronize`), unscale, clip, then step inside `skip_synchronize` so
Horovod does not reduce a second time. fp32 and bf16 have nothing to unscale.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from hvdtrain.backend import StepPolicy


class Precision:
    """fp32: no autocast, no loss scaling."""

    compute_dtype: torch.dtype = torch.float32

    def __init__(self, device_type: str, policy: StepPolicy) -> None:
        self.device_type = device_type

    @contextlib.contextmanager
    def forward_context(self) -> Iterator[None]:
        """Where the model's forward pass runs."""
        if self.compute_dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device_type, dtype=self.compute_dtype):
                yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: Any, parameters: Iterable[torch.Tensor], clip_norm: float | None) -> float:
        """Horovod's order: synchronize, unscale, clip, step without a second synchronisation. Returns the
        seconds spent waiting in `synchronize` (the gradient allreduce the backward passes started)."""
        # Horovod's optimizer; a plain one has nothing to wait for (StepPolicy.allreduce=False: one rank)
        reduced = hasattr(optimizer, "synchronize")
        start = time.perf_counter()
        if reduced:
            optimizer.synchronize()
        waited = time.perf_counter() - start
        self.unscale(optimizer)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(parameters), clip_norm)
        with optimizer.skip_synchronize() if reduced else contextlib.nullcontext():
            self.step(optimizer)
        return waited

    def unscale(self, optimizer: Any) -> None:
        """Divides the gradients by the loss scale (nothing to do without one)."""

    def step(self, optimizer: Any) -> None:
        optimizer.step()

    def loss_scale(self) -> float | None:
        return None

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


class BF16(Precision):
    """bfloat16 autocast; fp32 weights and gradients, no loss scaling (bf16 has fp32's range)."""

    compute_dtype = torch.bfloat16


class FP16(Precision):
    """float16 autocast with dynamic loss scaling: an overflowing step is skipped and the scale halved. After
    the allreduce every rank sees the same gradients, so every rank skips alike."""

    compute_dtype = torch.float16

    def __init__(self, device_type: str, policy: StepPolicy) -> None:
        super().__init__(device_type, policy)
        self.scaler = torch.amp.GradScaler(device_type, init_scale=policy.loss_scale_init,
                                           growth_interval=policy.loss_scale_growth_interval)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: Any) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: Any) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()

    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale())

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        assert state is not None, "an fp16 state needs the loss scaler's"
        self.scaler.load_state_dict(state)


PRECISIONS: dict[str, type[Precision]] = {"fp32": Precision, "bf16": BF16, "fp16": FP16}


def make_precision(device_type: str, policy: StepPolicy) -> Precision:
    return PRECISIONS[policy.precision](device_type, policy)
