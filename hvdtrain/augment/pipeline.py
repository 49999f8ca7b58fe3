"""Augmentation inside the input pipeline: random transforms on training batches (in the loader's
worker thread, or, with augment.device=gpu, handed to the training step to apply on the device),
standardisation on training and validation images."""

from __future__ import annotations

import importlib
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


CPU_KERNEL = "hvdtrain.augment.pipeline"  # the kernel of data worker processes: native, else numpy


def apply_transforms(images: np.ndarray, params: Sequence[dict[str, Any]], config: AugmentConfig) -> np.ndarray:
    """The framework-free kernel (worker processes import no framework): the native kernel where it builds,
    else the numpy one; both give the same pixels (tests/unit/augment)."""
    from hvdtrain.augment import native
    from hvdtrain.augment.kernel import NUMPY_OPS, apply_batch

    if native.use_native(images, config):
        return native.apply_transforms(images, params, config)
    out: np.ndarray = apply_batch(NUMPY_OPS, np.asarray(images, dtype=np.float32), params, config.fill_mode,
                                  config.cval)
    return out


def pixels(images: np.ndarray) -> np.ndarray:
    """A batch as float32 in [0, 1]: uint8 pixels divided by 255 (a division, as the backends do on the device)."""
    out: np.ndarray = images.astype(np.float32) / np.float32(255) if images.dtype == np.uint8 else \
        np.asarray(images, dtype=np.float32)
    return out


@dataclass(frozen=True)
class TrainTransform:
    """The loader transform of one rank and epoch whose loader starts at micro-batch `first_batch`: the random
    transforms drawn from (seed, rank, epoch, batch), then standardisation. Picklable: worker processes get
    it with each batch, and import the kernel module `kernel` themselves."""

    cfg: AugmentConfig
    stats: FeatureStats | None
    seed: int
    rank: int
    epoch: int
    first_batch: int
    on_device: bool
    kernel: str  # module with apply_transforms(images, params, config)

    def __call__(self, x: np.ndarray, y: np.ndarray, batch_index: int) -> tuple[Any, ...]:
        cfg = self.cfg
        if self.on_device:  # the same draws, applied by the step; pixels stay as stored (uint8) until then
            rng = epoch_rng(self.seed, self.rank, self.epoch, self.first_batch + batch_index)
            return x, y, DeviceAugment(sample_transforms(cfg, len(x), x.shape[1:], rng), self.stats)
        x = pixels(x)
        if cfg.random:
            rng = epoch_rng(self.seed, self.rank, self.epoch, self.first_batch + batch_index)
            kernel = importlib.import_module(self.kernel).apply_transforms
            x = kernel(x, sample_transforms(cfg, len(x), x.shape[1:], rng), cfg)
        if cfg.standardizes:
            x = standardize(x, cfg, self.stats)
        return np.ascontiguousarray(x, dtype=np.float32), y


@dataclass(frozen=True)
class EvalTransform:
    """Validation batches: the training normalisation, no random transform."""

    cfg: AugmentConfig
    stats: FeatureStats | None

    def __call__(self, x: np.ndarray, y: np.ndarray, batch_index: int) -> tuple[Any, ...]:
        return standardize(pixels(x), self.cfg, self.stats), y


class AugmentPipeline:
    """Applies an `augment` config with a backend's kernel (`kernel`: the module holding it)."""

    def __init__(self, cfg: AugmentConfig, kernel: str | None, stats: FeatureStats | None,
                 on_device: bool = False) -> None:
        self.cfg = cfg
        self.kernel = kernel or CPU_KERNEL
        self.stats = stats
        self.on_device = on_device and cfg.random  # nothing random: standardising in the loader is all there is

    def train_transform(self, seed: int, rank: int, epoch: int, first_batch: int = 0) -> TrainTransform | None:
        """The loader transform for one rank and epoch whose loader starts at micro-batch `first_batch` of
        the epoch; None when nothing is configured."""
        if not (self.cfg.random or self.cfg.standardizes):
            return None
        return TrainTransform(self.cfg, self.stats, seed, rank, epoch, first_batch, self.on_device, self.kernel)

    def eval_transform(self) -> EvalTransform | None:
        """Validation images get the same normalisation as training images, and no random transform."""
        return EvalTransform(self.cfg, self.stats) if self.cfg.standardizes else None
