"""Magnitude pruning, framework-neutral: when to prune, which weights, and the sparsity report.

Backends hand over their kernels as numpy arrays with the axis of their output channels (`PrunableWeight`) and
multiply by the masks after every optimizer step, so pruned weights stay exactly zero. Rank 0 computes
the masks from its weights and broadcasts them: every rank holds the same masks by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hvdtrain.backend import PrunableWeight
from hvdtrain.config import Config, PruneConfig
from hvdtrain.errors import ConfigError


def zhu_gupta(progress: float, target: float) -> float:
    """Sparsity after `progress` (0..1) of the ramp: target x (1 - (1 - progress)^3), initial sparsity 0."""
    p = min(max(progress, 0.0), 1.0)
    return target * (1.0 - (1.0 - p) ** 3)


class Pruner:
    """The `prune` schedule in optimizer steps and the mask rule."""

    def __init__(self, cfg: Config, steps_per_epoch: int, epochs: int | None = None) -> None:
        """`epochs`: the run's (train.epochs, or what train.max_steps gives)."""
        self.cfg: PruneConfig = cfg.prune
        epochs = cfg.train.epochs if epochs is None else epochs
        end = self.cfg.end_epoch if self.cfg.end_epoch is not None else max(epochs - 1, 1)
        if self.enabled and self.cfg.schedule == "gradual" and not self.cfg.start_epoch < end <= epochs:
            raise ConfigError(f"prune: start_epoch={self.cfg.start_epoch} and end_epoch={end} must satisfy "
                              f"start_epoch < end_epoch <= the run's epochs ({epochs}): adjust them")
        if self.enabled and self.cfg.start_epoch >= epochs:
            raise ConfigError(f"prune.start_epoch={self.cfg.start_epoch} leaves no epoch to prune in "
                              f"(the run's epochs: {epochs}): lower it")
        self.start = self.cfg.start_epoch * steps_per_epoch
        self.end = end * steps_per_epoch if self.cfg.schedule == "gradual" else self.start

    @property
    def enabled(self) -> bool:
        return self.cfg.method != "none"

    def active(self, step: int) -> bool:
        """Whether masks exist after `step` optimizer steps."""
        return self.enabled and step >= max(self.start, 1)

    def sparsity_due(self, step: int) -> float | None:
        """The sparsity to prune to after optimizer step `step` (1-based), or None if masks stay as they are."""
        if not self.enabled or step < self.start or step > max(self.end, self.start):
            return None
        if self.cfg.schedule == "oneshot":
            return self.cfg.target_sparsity if step == max(self.start, 1) else None
        if (step - self.start) % self.cfg.every_steps and step != self.end:
            return None
        return zhu_gupta((step - self.start) / (self.end - self.start), self.cfg.target_sparsity)

    def masks(self, kernels: dict[str, PrunableWeight], sparsity: float) -> dict[str, np.ndarray]:
        """Keep-masks (float32, 1 = kept) reaching `sparsity` by magnitude; the last kernel (the output layer)
        is left whole. Already-pruned weights have magnitude 0, so masks only grow."""
        names = list(kernels)[:-1]
        if self.cfg.method == "channels":
            return {n: _channel_mask(kernels[n], sparsity) for n in names}
        if self.cfg.scope == "layer":
            return {n: _magnitude_mask(np.abs(kernels[n].values), sparsity) for n in names}
        flat = np.concatenate([np.abs(kernels[n].values).ravel() for n in names]) if names else np.zeros(0)
        threshold_mask = _magnitude_mask(flat, sparsity)
        out, offset = {}, 0
        for n in names:
            size = kernels[n].values.size
            out[n] = threshold_mask[offset:offset + size].reshape(kernels[n].values.shape)
            offset += size
        return out


def _magnitude_mask(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """Zeroes the round(sparsity x n) smallest entries (ties broken by position, the same on every run)."""
    k = int(round(sparsity * magnitudes.size))
    mask = np.ones(magnitudes.size, dtype=np.float32)
    if k > 0:
        mask[np.argsort(magnitudes.ravel(), kind="stable")[:k]] = 0.0
    return mask.reshape(magnitudes.shape)


def _channel_mask(kernel: PrunableWeight, sparsity: float) -> np.ndarray:
    values = np.moveaxis(kernel.values, kernel.out_axis, 0)
    norms = np.sqrt(np.square(values.reshape(len(values), -1)).sum(axis=1))
    keep = _magnitude_mask(norms, sparsity)
    shape = [1] * kernel.values.ndim
    shape[kernel.out_axis] = len(keep)
    return np.broadcast_to(keep.reshape(shape), kernel.values.shape).astype(np.float32)


def masks_from_zeros(kernels: dict[str, PrunableWeight]) -> dict[str, np.ndarray]:
    """The masks in force, read back from the weights (after a resume or an elastic rollback)."""
    return {n: (k.values != 0).astype(np.float32) for n, k in list(kernels.items())[:-1]}


def mask_digest(masks: dict[str, np.ndarray]) -> str:
    """A short hash of a set of masks, to compare them across ranks."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(masks[name], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def sparsity_report(kernels: dict[str, PrunableWeight], prune: PruneConfig) -> dict[str, Any]:
    """Per-kernel and overall zero fractions of the final weights (sparsity.json)."""
    layers: list[dict[str, Any]] = []
    for name, k in kernels.items():
        zeros = int(np.count_nonzero(k.values == 0))
        values = np.moveaxis(k.values, k.out_axis, 0).reshape(k.values.shape[k.out_axis], -1)
        dead = int(np.count_nonzero(~values.any(axis=1)))
        layers.append({"name": name, "shape": list(k.values.shape), "zeros": zeros, "size": int(k.values.size),
                       "sparsity": zeros / k.values.size, "zero_channels": dead,
                       "channels": int(values.shape[0])})
    prunable = layers[:-1]
    total = sum(layer["size"] for layer in prunable)
    return {"method": prune.method, "scope": prune.scope, "schedule": prune.schedule,
            "target_sparsity": prune.target_sparsity,
            "sparsity": sum(layer["zeros"] for layer in prunable) / total if total else 0.0,
            "layers": layers}
