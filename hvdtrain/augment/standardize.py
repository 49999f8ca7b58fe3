"""Keras' `standardize` step (rescale, samplewise and featurewise normalisation) for NHWC batches, and
featurewise statistics over the whole training set across all ranks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hvdtrain.config import AugmentConfig

EPSILON = 1e-6  # Keras adds it to every std it divides by


@dataclass(frozen=True)
class FeatureStats:
    """Per-channel mean and std of the (rescaled) training set."""

    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class Standardization:
    """The standardisation as constants (what exports bake in before the model), in Keras' order: multiply by
    `rescale`; subtract each image's mean; divide by each image's std + `epsilon`; subtract the per-channel
    `mean`; divide by the per-channel `divisor` (the training set's std + epsilon, float32)."""

    rescale: float | None = None
    samplewise_center: bool = False
    samplewise_std_normalization: bool = False
    mean: np.ndarray | None = None
    divisor: np.ndarray | None = None
    epsilon: float = EPSILON

    def apply(self, images: np.ndarray) -> np.ndarray:
        """On a float32 NHWC numpy batch (a new array); torch_backend/augment.py and tf_backend/augment.py have
        the same on their tensors (`standardize_tensor`)."""
        x = np.array(images, dtype=np.float32, copy=True)
        if self.rescale is not None:
            x *= self.rescale
        if self.samplewise_center:
            x -= x.mean(axis=(1, 2, 3), keepdims=True)
        if self.samplewise_std_normalization:
            x /= x.std(axis=(1, 2, 3), keepdims=True) + self.epsilon
        if self.mean is not None:
            x -= self.mean
        if self.divisor is not None:
            x /= self.divisor
        return x

    @classmethod
    def of(cls, aug: AugmentConfig, stats: FeatureStats | None) -> Standardization:
        """The augment section's standardisation, with the run's featurewise statistics where it uses them."""
        if (aug.featurewise_center or aug.featurewise_std_normalization) and stats is None:
            raise ValueError("featurewise statistics are needed")
        return cls(rescale=aug.rescale, samplewise_center=aug.samplewise_center,
                   samplewise_std_normalization=aug.samplewise_std_normalization,
                   mean=np.asarray(stats.mean, np.float32) if aug.featurewise_center and stats else None,
                   divisor=np.asarray(stats.std, np.float32) + np.float32(EPSILON)
                   if aug.featurewise_std_normalization and stats else None)


def featurewise_stats(read: Callable[[np.ndarray], np.ndarray], num_samples: int, rank: int, world_size: int,
                      rescale: float | None, allreduce_sum: Callable[[np.ndarray], np.ndarray],
                      chunk: int = 512) -> FeatureStats:
    """Each rank sums a disjoint slice of the training set (`read(indices)`: float32 images in [0, 1], read
    `chunk` at a time, so a streamed dataset is never held whole); one allreduce makes the global statistics."""
    mine = np.arange(rank, num_samples, world_size)
    count, sums, squares = 0.0, None, None
    for lo in range(0, len(mine), chunk):
        part = read(mine[lo:lo + chunk]).astype(np.float64)
        if rescale is not None:
            part = part * rescale
        count += part.shape[0] * part.shape[1] * part.shape[2]
        s, q = part.sum(axis=(0, 1, 2)), np.square(part).sum(axis=(0, 1, 2))
        sums, squares = (s, q) if sums is None else (sums + s, squares + q)
    channels = read(np.arange(1)).shape[-1] if sums is None else len(sums)
    if sums is None:
        sums = squares = np.zeros(channels)
    total = allreduce_sum(np.concatenate([[count], sums, squares]))
    count, sums, squares = total[0], total[1:1 + channels], total[1 + channels:]
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return FeatureStats(mean.astype(np.float32), std.astype(np.float32))


def standardize(x: np.ndarray, cfg: AugmentConfig, stats: FeatureStats | None) -> np.ndarray:
    """The normalisations of `cfg`, in Keras' order, on a float32 NHWC batch (returns a new array)."""
    return Standardization.of(cfg, stats).apply(x)
