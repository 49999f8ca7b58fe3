"""Keras optimizers with PyTorch's update rules, so one config means the same steps on both backends.

Keras' own SGD keeps `v = momentum * v - lr * g` (the LR inside the velocity) and its Adam adds epsilon to
the bias-corrected root differently; both differ from PyTorch as soon as the LR changes (warmup,
schedules) or the second moment is small. These follow torch.optim.SGD / Adam / AdamW exactly:

    SGD:   g += wd * w;  b = momentum * b + g;  d = g + momentum * b (nesterov) or b;  w -= lr * d
    Adam:  g += wd * w (adam) or w *= 1 - lr * wd (adamw);  m, v moments;
           w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class _PerVariableLR(keras.optimizers.Optimizer):
    """torch's per-parameter-group LR and weight decay: `lr_multipliers` maps a variable's path to a factor
    (default 1), `no_decay` holds the paths weight decay skips (optim.weight_decay_on); set both before `build`."""

    lr_multipliers: dict[str, float] = {}
    no_decay: set[str] = set()

    def build(self, variables: list[Any]) -> None:
        super().build(variables)
        self._factors = [self.lr_multipliers.get(v.path, 1.0) for v in variables]
        self._decayed: list[bool] = [v.path not in self.no_decay for v in variables]

    def _decays(self, variable: Any) -> bool:
        return bool(self._decayed[self._get_variable_index(variable)])

    def _lr(self, learning_rate: Any, variable: Any) -> Any:
        lr = ops.cast(learning_rate, variable.dtype)
        # A Python number per variable, fixed when the step is traced.
        factor = self._factors[self._get_variable_index(variable)]
        return lr if factor == 1.0 else ops.multiply(lr, factor)


class TorchSGD(_PerVariableLR):
    """torch.optim.SGD (dampening 0) as a Keras optimizer; `l2` is torch's coupled weight_decay."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 l2: float = 0.0, name: str = "torch_sgd", **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum, self.nesterov, self.l2 = momentum, nesterov, l2

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self.buffers = [self.add_variable_from_reference(v, "momentum") for v in variables] \
            if self.momentum else []

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = self._lr(learning_rate, variable)
        g = ops.cast(gradient, variable.dtype)
        if self.l2 and self._decays(variable):
            g = ops.add(g, ops.multiply(variable, self.l2))
        if self.momentum:
            buf = self.buffers[self._get_variable_index(variable)]
            self.assign(buf, ops.add(ops.multiply(buf, self.momentum), g))  # zero start: first b = g
            g = ops.add(g, ops.multiply(buf, self.momentum)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(lr, g))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov, "l2": self.l2}


def _bias_correction(beta: float, step: Any) -> Any:
    """1 - beta^step as torch computes it (in float64 from the Python float), to float32 precision.

    `1 - ops.power(float32(beta), step)` is off by a relative 1.3e-5 for beta = 0.999 (float32(0.999) =
    0.99900001287; 1 - that loses four digits), which made Adam's steps 6.5e-6 (relative) too small until
    beta_2^step fades (thousands of steps). As -expm1(step * log1p(-(1 - beta))), with 1 - beta taken in
    Python's float64, nothing cancels (tests/unit/backends/test_optimizer_parity.py)."""
    return ops.negative(ops.expm1(ops.multiply(step, ops.log1p(ops.cast(-(1.0 - beta), step.dtype)))))


class TorchAdam(_PerVariableLR):
    """torch.optim.Adam (coupled `weight_decay`) or AdamW (`decoupled=True`) as a Keras optimizer."""

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, decay: float = 0.0, decoupled: bool = False, name: str = "torch_adam",
                 **kwargs: Any) -> None:
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.decay, self.decoupled = decay, decoupled

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self.moments = [self.add_variable_from_reference(v, "m") for v in variables]
        self.second_moments = [self.add_variable_from_reference(v, "v") for v in variables]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = self._lr(learning_rate, variable)
        g = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        if self.decay and self.decoupled and self._decays(variable):
            self.assign(variable, ops.multiply(variable, 1.0 - lr * self.decay))
        elif self.decay and self._decays(variable):
            g = ops.add(g, ops.multiply(variable, self.decay))
        index = self._get_variable_index(variable)
        m, v = self.moments[index], self.second_moments[index]
        self.assign(m, ops.add(ops.multiply(m, self.beta_1), ops.multiply(g, 1.0 - self.beta_1)))
        self.assign(v, ops.add(ops.multiply(v, self.beta_2), ops.multiply(ops.square(g), 1.0 - self.beta_2)))
        bias_1, bias_2 = _bias_correction(self.beta_1, step), _bias_correction(self.beta_2, step)
        denom = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(bias_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(ops.divide(lr, bias_1), m), denom))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                "decay": self.decay, "decoupled": self.decoupled}
