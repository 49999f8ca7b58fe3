"""Augmentation inside the input pipeline: random transforms on training batches (in the loader's
worker thread, or, with augment.device=gpu, handed to the training step to apply on the device),
standardisation on training and validation images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvdtrain.augment.sampling import epoch_rng, sample_transforms
from hvdtrain.augment.standardize import FeatureStats, standardize
from hvdtrain.config import AugmentConfig

Kernel = Callable[[np.ndarray, Sequence[dict[str, Any]], AugmentConfig], np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, int], tuple[Any, ...]]


@dataclass(frozen=True)
class DeviceAugment:
    """augment.device=gpu: what the training step applies to one batch on its device, in Keras' order: the
    random transforms with these parameters, then the standardisation (with these featurewise statistics)."""

    transforms: list[dict[str, Any]]
    stats: FeatureStats | None


class AugmentPipeline:
    """Applies an `augment` config with a backend's kernel."""

    def __init__(self, cfg: AugmentConfig, kernel: Kernel | None, stats: FeatureStats | None,
                 on_device: bool = False) -> None:
        self.cfg = cfg
        self.kernel = kernel
        self.stats = stats
        self.on_device = on_device and cfg.random  # nothing random: standardising in the loader is all there is

    def train_transform(self, seed: int, rank: int, epoch: int, first_batch: int = 0) -> Transform | None:
        """The loader transform for one rank and epoch whose loader starts at micro-batch `first_batch` of
        the epoch; None when nothing is configured."""
        if not (self.cfg.random or self.cfg.standardizes):
            return None

        def transform(x: np.ndarray, y: np.ndarray, batch_index: int) -> tuple[Any, ...]:
            if self.on_device:  # the same draws, applied by the step
                rng = epoch_rng(seed, rank, epoch, first_batch + batch_index)
                params = sample_transforms(self.cfg, len(x), x.shape[1:], rng)
                return np.ascontiguousarray(x, dtype=np.float32), y, DeviceAugment(params, self.stats)
            if self.cfg.random and self.kernel is not None:
                rng = epoch_rng(seed, rank, epoch, first_batch + batch_index)
                x = self.kernel(x, sample_transforms(self.cfg, len(x), x.shape[1:], rng), self.cfg)
            if self.cfg.standardizes:
                x = standardize(x, self.cfg, self.stats)
            return np.ascontiguousarray(x, dtype=np.float32), y

        return transform

    def eval_images(self, x: np.ndarray) -> np.ndarray:
        """Validation images get the same normalisation as training images, and no random transform."""
        return standardize(x, self.cfg, self.stats) if self.cfg.standardizes else x
