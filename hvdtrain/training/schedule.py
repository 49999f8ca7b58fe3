"""The learning rate at every optimizer step: warmup ramp times schedule (formulas in docs/policy.md).

The loop computes it once per step and hands the number to the backend, so both frameworks use the same
value by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hvdtrain.config import OptimConfig


@dataclass(frozen=True)
class LRSchedule:
    """lr(t) = warmup(t) x decay(t) for the optimizer step t = 0, 1, ..., total_steps - 1.

    warmup(t) = base + (peak - base) x min(1, t / W) with W = warmup_steps (peak when W = 0); with `from_zero`
    (policy.warmup_steps), peak x (t + 1) / (W + 1) for t < W.
    decay(t): constant 1; step gamma ** #{milestones m <= t / steps_per_epoch};
    cosine r + (1 - r) x (1 + cos(pi x p)) / 2 with r = cosine_min_ratio and p = t / total_steps, or with
    `from_zero` p = (t - W) / (total_steps - W) from the end of the ramp (1 before it).
    """

    base_lr: float
    peak_lr: float
    warmup_steps: int
    steps_per_epoch: int
    total_steps: int
    kind: str = "constant"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    min_ratio: float = 0.0
    from_zero: bool = False

    @classmethod
    def from_config(cls, optim: OptimConfig, peak_lr: float, warmup_epochs: float, steps_per_epoch: int,
                    epochs: int, *, warmup_steps: int = 0, total_steps: int | None = None) -> LRSchedule:
        """`warmup_steps` (policy.warmup_steps) takes the place of `warmup_epochs`; `total_steps`
        (train.max_steps) that of epochs x steps_per_epoch."""
        return cls(base_lr=optim.lr, peak_lr=peak_lr,
                   warmup_steps=warmup_steps or round(warmup_epochs * steps_per_epoch),
                   steps_per_epoch=steps_per_epoch,
                   total_steps=total_steps if total_steps is not None else steps_per_epoch * epochs,
                   kind=optim.schedule, milestones=optim.step_milestones, gamma=optim.step_gamma,
                   min_ratio=optim.cosine_min_ratio, from_zero=warmup_steps > 0)

    def warmup(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.peak_lr
        if self.from_zero:
            return self.peak_lr * (step + 1) / (self.warmup_steps + 1)
        return self.base_lr + (self.peak_lr - self.base_lr) * step / self.warmup_steps

    def decay(self, step: int) -> float:
        if self.kind == "step":
            epoch = step / self.steps_per_epoch
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "cosine":
            if self.from_zero:
                if step < self.warmup_steps:
                    return 1.0
                progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
            else:
                progress = step / self.total_steps
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def at(self, step: int) -> float:
        """The LR of optimizer step `step` (0-based, counted over the whole run)."""
        return self.warmup(step) * self.decay(step)
