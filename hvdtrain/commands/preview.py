"""`hvdtrain augment-preview`: a PNG grid of augmented training samples, to see what a config does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hvdtrain.augment import epoch_rng, sample_transforms
from hvdtrain.augment.pipeline import pixels
from hvdtrain.backend import get_augment_kernel
from hvdtrain.config import Config
from hvdtrain.data import load_dataset
from hvdtrain.errors import ConfigError
from hvdtrain.files import write_atomic

CELL = 96  # pixels per image in the grid


def write_preview(cfg: Config, out: Path, rows: int = 4, variants: int = 7) -> Path:
    """Each row: one training image, then `variants` random augmentations of it (seeded by `seed`)."""
    from PIL import Image

    if not cfg.augment.random:
        raise ConfigError("augment-preview: the config sets no random transform: set e.g. "
                          "augment.rotation_range=20")
    dataset = load_dataset(cfg.data, cfg.seed)
    rows = min(rows, len(dataset.train))
    originals = pixels(dataset.train.read(np.arange(rows))[0])
    rng = epoch_rng(cfg.seed, 0, 0)
    kernel = get_augment_kernel(cfg.backend)
    batch = np.repeat(originals, variants, axis=0)
    augmented = kernel(batch, sample_transforms(cfg.augment, len(batch), batch.shape[1:], rng), cfg.augment)
    augmented = augmented.reshape(rows, variants, *originals.shape[1:])
    grid = np.concatenate([originals[:, None], augmented], axis=1)  # (rows, 1 + variants, H, W, C)
    height, width, channels = originals.shape[1:]
    scale = max(1, CELL // max(height, width))
    pad = 2
    canvas = np.ones((rows * (height * scale + pad) + pad, (variants + 1) * (width * scale + pad) + pad,
                      channels), dtype=np.float32)
    for r in range(rows):
        for c in range(variants + 1):
            tile = np.kron(np.clip(grid[r, c], 0, 1), np.ones((scale, scale, 1), dtype=np.float32))
            y, x = pad + r * (height * scale + pad), pad + c * (width * scale + pad)
            canvas[y:y + height * scale, x:x + width * scale] = tile
    png = (canvas * 255).round().astype(np.uint8)
    image = Image.fromarray(png[..., 0] if channels == 1 else png[..., :3])
    out.parent.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(out, buf.getvalue())
    return out
