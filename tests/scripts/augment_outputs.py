"""Runs one implementation of augmentation on inputs saved by a test and saves what it produced.

    python tests/scripts/augment_outputs.py {keras|torch|tensorflow} IN.npz OUT.npz [IN2.npz OUT2.npz ...]

Each framework runs in its own process (hvdtrain never loads torch and TensorFlow together); one process takes
any number of input files, since importing the framework is what costs. Each IN.npz holds
`images` (N, H, W, C) float32, `params` (JSON list of Keras parameter dicts), `config` (JSON dict of
augment keys). `keras` writes tf_keras' ImageDataGenerator.apply_transform per image, its
get_random_transform draws (`draws`, JSON), and its standardize after fit (`standardized`).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    which, *paths = sys.argv[1:]
    assert paths and len(paths) % 2 == 0, __doc__
    for src, dst in zip(paths[::2], paths[1::2], strict=True):
        run(which, src, dst)


def run(which: str, src: str, dst: str) -> None:
    data = np.load(src)
    images = data["images"]
    params = json.loads(str(data["params"]))
    config = json.loads(str(data["config"]))
    out: dict[str, np.ndarray] = {}
    if which == "keras":
        from tf_keras.preprocessing.image import ImageDataGenerator

        gen = ImageDataGenerator(fill_mode=config.get("fill_mode", "nearest"), cval=config.get("cval", 0.0))
        if params:
            out["applied"] = np.stack([gen.apply_transform(img, p) for img, p in zip(images, params, strict=True)])
        sampler = ImageDataGenerator(**json.loads(str(data["sampler_config"])))
        np.random.seed(0)
        draws = [sampler.get_random_transform(images.shape[1:]) for _ in range(int(data["draws"]))]
        out["draws"] = np.array(json.dumps(draws, default=float))
        norm = ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True,
                                  samplewise_center=True, samplewise_std_normalization=True, rescale=0.5)
        norm.fit(images)
        out["standardized"] = np.stack([norm.standardize(np.copy(img)) for img in images])
    else:
        from hvdtrain.config import AugmentConfig

        if which == "torch":
            from torch_backend.augment import apply_transforms
        else:
            from tf_backend.augment import apply_transforms
        cfg = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        out["applied"] = np.asarray(apply_transforms(images, params, cfg))
    out["modules"] = np.array(json.dumps(sorted(m for m in ("torch", "tensorflow") if m in sys.modules)))
    np.savez(dst, **out)


if __name__ == "__main__":
    main()
