"""Random transform parameters with the keys, units and distributions of Keras'
`ImageDataGenerator.get_random_transform`, drawn from a numpy Generator seeded per (seed, rank, epoch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hvdtrain.config import AugmentConfig


def epoch_rng(seed: int, rank: int, epoch: int, batch: int = 0) -> np.random.Generator:
    """The generator for one rank's augmentation of one batch of an epoch: reproducible, different across
    ranks, and independent of the batches before it (so a resumed epoch draws what it would have drawn)."""
    return np.random.default_rng([seed, rank, epoch, 0x61756720, batch])  # "aug ": a stream tag


def _shift(spec: int | float | tuple[float, ...], n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Keras' shift rule: a list picks one of its values with a random sign, an int n picks a whole pixel
    count from 0..n-1 with a random sign, a float draws U(-r, r); a largest value < 1 means a fraction."""
    values: np.ndarray
    if isinstance(spec, tuple):
        values = rng.choice(np.asarray(spec, dtype=np.float64), n) * rng.choice([-1.0, 1.0], n)
    elif isinstance(spec, int):
        if spec == 0:
            return np.zeros(n)
        values = rng.integers(0, spec, n).astype(np.float64) * rng.choice([-1.0, 1.0], n)
    else:
        if spec == 0:
            return np.zeros(n)
        values = rng.uniform(-spec, spec, n)
    if np.max(spec) < 1:
        values = values * size
    return values


def sample_transforms(config: AugmentConfig, n: int, image_shape: tuple[int, ...],
                      rng: np.random.Generator) -> list[dict[str, Any]]:
    """Parameters for `n` images: dicts with exactly Keras' keys (`theta`, `tx`, `ty`, `shear`, `zx`, `zy`,
    `flip_horizontal`, `flip_vertical`, `channel_shift_intensity`, `brightness`) and meanings, so the same
    dict gives the same image in Keras' `apply_transform`. As in Keras, `tx` comes from
    `height_shift_range` scaled by the image height and `ty` from `width_shift_range` and the width."""
    height, width = image_shape[0], image_shape[1]
    zeros = np.zeros(n)
    theta = rng.uniform(-config.rotation_range, config.rotation_range, n) if config.rotation_range else zeros
    tx = _shift(config.height_shift_range, n, height, rng)
    ty = _shift(config.width_shift_range, n, width, rng)
    shear = rng.uniform(-config.shear_range, config.shear_range, n) if config.shear_range else zeros
    lower, upper = config.zoom_bounds()
    if (lower, upper) == (1.0, 1.0):
        zx = zy = np.ones(n)
    else:
        zx, zy = rng.uniform(lower, upper, (2, n))  # x and y independently, as Keras
    flip_h = (rng.random(n) < 0.5) & config.horizontal_flip
    flip_v = (rng.random(n) < 0.5) & config.vertical_flip
    shift = None
    if config.channel_shift_range:
        shift = rng.uniform(-config.channel_shift_range, config.channel_shift_range, n)
    brightness = None
    if config.brightness_range is not None:
        brightness = rng.uniform(config.brightness_range[0], config.brightness_range[1], n)
    return [{"theta": float(theta[i]), "tx": float(tx[i]), "ty": float(ty[i]), "shear": float(shear[i]),
             "zx": float(zx[i]), "zy": float(zy[i]), "flip_horizontal": bool(flip_h[i]),
             "flip_vertical": bool(flip_v[i]),
             "channel_shift_intensity": None if shift is None else float(shift[i]),
             "brightness": None if brightness is None else float(brightness[i])} for i in range(n)]
