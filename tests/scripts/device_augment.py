"""augment.device=gpu's path, run on this process's device (the CPU where there is no GPU): the step's own
transform and standardisation give the loader path's pixels, and a training step fed (x, y, DeviceAugment)
lands on the weights of a step fed the loader-transformed batch. Tests only.

    python device_augment.py torch|tensorflow OUT.json
"""

from __future__ import annotations

import json
import sys

import numpy as np

from hvdtrain.augment.pipeline import CPU_KERNEL, AugmentPipeline
from hvdtrain.augment.standardize import featurewise_stats
from hvdtrain.backend import get_backend
from hvdtrain.config import load_config
from hvdtrain.training.setup import build_spec

AUGMENT = ["augment.rotation_range=25", "augment.width_shift_range=0.2", "augment.zoom_range=0.2",
           "augment.shear_range=10", "augment.horizontal_flip=true", "augment.fill_mode=reflect",
           "augment.brightness_range=[0.8,1.2]", "augment.channel_shift_range=0.1", "augment.rescale=0.5",
           "augment.featurewise_center=true", "augment.featurewise_std_normalization=true",
           "augment.samplewise_center=true"]


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    cfg = load_config(None, [f"backend={name}", "model.name=cnn", "model.channels=[4]", "model.hidden_units=[8]",
                             "optim.momentum=0.0", *AUGMENT])
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)  # 8-bit pixels: scaled to [0, 1] on the device
    y = rng.integers(0, 10, 6).astype(np.int64)
    sample = rng.random((40, 12, 12, 3), dtype=np.float32)
    stats = featurewise_stats(lambda idx: sample[idx], len(sample), 0, 1, cfg.augment.rescale, lambda v: v)

    # The loader's framework-free kernel (native where it builds, else numpy: the same pixels).
    on_loader = AugmentPipeline(cfg.augment, CPU_KERNEL, stats).train_transform(cfg.seed, 0, 2, 5)
    in_step = AugmentPipeline(cfg.augment, CPU_KERNEL, stats, on_device=True).train_transform(cfg.seed, 0, 2, 5)
    assert on_loader is not None and in_step is not None
    x_loader, _ = on_loader(x, y, 1)
    x_raw, _, work = in_step(x, y, 1)

    backend = get_backend(name)
    placement = backend.setup(1)
    if name == "torch":
        import torch

        from torch_backend.augment import augment_on_device
        on_device = torch.from_numpy(x_raw).to(placement.device).float().div(255)  # the rank's GPU where there is one
        x_device = augment_on_device(on_device, work, cfg.augment).cpu().numpy()
    else:
        import tensorflow as tf

        from tf_backend.augment import augment_on_device
        x_device = augment_on_device(tf.cast(tf.convert_to_tensor(x_raw), tf.float32) / 255.0, work,
                                     cfg.augment).numpy()

    backend.build(build_spec(cfg, (12, 12, 3), 10, augment_in_step=True))
    start = backend.state()

    def step(batch: tuple) -> list[np.ndarray]:
        backend.load_state(start)
        backend.train_step([batch], 0.1)
        return list(backend.weights().values())

    reference = step((x_loader, y))
    weights = step((x_raw, y, work))
    report = {"device": placement.device,
              "pixels_max_diff": float(np.max(np.abs(x_device - x_loader))),
              "raw_dtype": str(x_raw.dtype),
              "pixels_changed": float(np.max(np.abs(x_loader - x / np.float32(255) * 0.5))),
              "weights_max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(weights, reference, strict=True))}
    with open(out, "w") as f:
        json.dump(report, f)
    backend.comm.shutdown()


if __name__ == "__main__":
    main()
