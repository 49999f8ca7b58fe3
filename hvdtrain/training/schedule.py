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

    warmup(t) = base + (peak - base) x min(1, t / W) with W = warmup_steps (peak when W = 0);
    decay(t): constant 1; step gamma ** #{milestones m <= t / steps_per_epoch};
    cosine r + (1 - r) x (1 + cos(pi x t / total_steps)) / 2 with r = cosine_min_ratio.
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

    @classmethod
    def from_config(cls, optim: OptimConfig, peak_lr: float, warmup_epochs: float, steps_per_epoch: int,
                    epochs: int) -> LRSchedule:
        return cls(base_lr=optim.lr, peak_lr=peak_lr, warmup_steps=round(warmup_epochs * steps_per_epoch),
                   steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs, kind=optim.schedule,
                   milestones=optim.step_milestones, gamma=optim.step_gamma, min_ratio=optim.cosine_min_ratio)

    def warmup(self, step: int) -> float:
        if step >= self.warmup_steps:
            return self.peak_lr
        return self.base_lr + (self.peak_lr - self.base_lr) * step / self.warmup_steps

    def decay(self, step: int) -> float:
        if self.kind == "step":
            epoch = step / self.steps_per_epoch
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.kind == "cosine":
            return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return 1.0

    def at(self, step: int) -> float:
        """The LR of optimizer step `step` (0-based, counted over the whole run)."""
        return self.warmup(step) * self.decay(step)
