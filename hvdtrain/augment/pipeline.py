"""Augmentation inside the input pipeline: random transforms on training batches (in the loader's
worker thread), standardisation on training and validation images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hvdtrain.augment.sampling import epoch_rng, sample_transforms
from hvdtrain.augment.standardize import FeatureStats, standardize
from hvdtrain.config import AugmentConfig

Kernel = Callable[[np.ndarray, Sequence[dict[str, Any]], AugmentConfig], np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class AugmentPipeline:
    """Applies an `augment` config with a backend's kernel."""

    def __init__(self, cfg: AugmentConfig, kernel: Kernel | None, stats: FeatureStats | None) -> None:
        self.cfg = cfg
        self.kernel = kernel
        self.stats = stats

    def train_transform(self, seed: int, rank: int, epoch: int, first_batch: int = 0) -> Transform | None:
        """The loader transform for one rank and epoch whose loader starts at micro-batch `first_batch` of
        the epoch; None when nothing is configured."""
        if not (self.cfg.random or self.cfg.standardizes):
            return None

        def transform(x: np.ndarray, y: np.ndarray, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
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
