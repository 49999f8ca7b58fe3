"""Augmentation: pixel parity with Keras' ImageDataGenerator on both backends, the sampler's distributions,
seeding, and standardisation.

Parity tolerance: the numpy, native, torch and TensorFlow kernels and tf_keras' `apply_transform` (SciPy, float64
inside, float32 out) must agree to 1e-5 on images in [0, 1]: only float32 rounding of the interpolation
separates them (measured: about 1.2e-7). The frameworks run in their own processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from hvdtrain.augment import epoch_rng, native, sample_transforms
from hvdtrain.augment.kernel import NUMPY_OPS, apply_batch
from hvdtrain.augment.standardize import featurewise_stats, standardize
from hvdtrain.config import AugmentConfig

PIXEL_TOL = 1e-5
SCRIPT = REPO / "tests" / "scripts" / "augment_outputs.py"
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
SAMPLER = {"rotation_range": 30, "width_shift_range": [0.1, 0.2], "height_shift_range": 3, "shear_range": 10,
           "zoom_range": [0.7, 1.2], "horizontal_flip": True, "channel_shift_range": 0.1,
           "brightness_range": [0.5, 1.5]}
SAMPLER_DRAWS = 2000
SAMPLER_SHAPE = (20, 30, 3)
Outputs = dict[tuple[str, str], dict[str, np.ndarray]]


def parity_case(mode: str, seed: int) -> tuple[np.ndarray, list[dict], AugmentConfig]:
    rng = np.random.default_rng(seed)
    cfg = AugmentConfig(rotation_range=45, width_shift_range=0.25, height_shift_range=(0.1, 0.3),
                        shear_range=25, zoom_range=(0.6, 1.4), horizontal_flip=True, vertical_flip=True,
                        channel_shift_range=0.2, fill_mode=mode, cval=0.25)
    images = rng.random((24, 11, 14, 3)).astype(np.float32)
    params = sample_transforms(cfg, len(images), images.shape[1:], rng)
    for i in range(0, len(params), 4):  # some images without any change, some with one change only
        params[i] = {**params[i], "theta": 0, "tx": 0, "ty": 0, "shear": 0, "zx": 1, "zy": 1}
        params[i + 1] = {**params[i + 1], "theta": 0, "shear": 0, "flip_horizontal": False}
    return images, params, cfg


def pixel_parity_case(mode: str) -> tuple[np.ndarray, list[dict], AugmentConfig]:
    return parity_case(mode, seed=FILL_MODES.index(mode))


def pixel_parity_inputs(mode: str) -> dict[str, object]:
    images, params, cfg = pixel_parity_case(mode)
    sampler = {"rotation_range": 30, "width_shift_range": [2, 4], "height_shift_range": 3, "zoom_range": 0.2}
    config = {"fill_mode": mode, "cval": cfg.cval, "kernel": "framework"}  # the backends' own ops
    return {"images": images, "params": json.dumps(params), "config": json.dumps(config),
            "sampler_config": json.dumps(sampler), "draws": 10}


def period_shifts() -> tuple[np.ndarray, list[dict]]:
    """Whole-pixel shifts whose integer coordinates land exactly on SciPy's wrap/reflect period boundaries."""
    h, w = 11, 14
    images = np.random.default_rng(5).random((1, h, w, 3)).astype(np.float32)
    base = {"theta": 0, "shear": 0, "zx": 1, "zy": 1, "flip_horizontal": False, "flip_vertical": False,
            "channel_shift_intensity": None, "brightness": None}
    shifts = [(tx, ty) for tx in (-(2 * h - 2), -(h - 1), -h, 3, h - 1, 2 * h) for ty in (-(w - 1), 0, 2 * w - 2)]
    params = [{**base, "tx": float(tx), "ty": float(ty)} for tx, ty in shifts]
    return np.repeat(images, len(params), axis=0), params


def period_inputs(mode: str) -> dict[str, object]:
    batch, params = period_shifts()
    return {"images": batch, "params": json.dumps(params), "config": json.dumps({"fill_mode": mode}),
            "sampler_config": "{}", "draws": 1}


def sampler_inputs() -> dict[str, object]:
    return {"images": np.zeros((1, *SAMPLER_SHAPE), dtype=np.float32), "params": "[]", "config": "{}",
            "sampler_config": json.dumps(SAMPLER), "draws": SAMPLER_DRAWS}


def standardize_images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.random((16, 5, 6, 3)).astype(np.float32) * np.array([1.0, 0.5, 2.0], dtype=np.float32)


def standardize_inputs() -> dict[str, object]:
    return {"images": standardize_images(), "params": "[]", "config": "{}", "sampler_config": "{}", "draws": 1}


# Every input that a test compares with Keras, by name; the `pixels-*` ones also with the torch and TensorFlow
# kernels.
CASES: dict[str, Callable[[], dict[str, object]]] = {
    **{f"pixels-{mode}": partial(pixel_parity_inputs, mode) for mode in FILL_MODES},
    **{f"periods-{mode}": partial(period_inputs, mode) for mode in FILL_MODES},
    "sampler": sampler_inputs,
    "standardize": standardize_inputs,
}
PIXEL_CASES = [f"pixels-{mode}" for mode in FILL_MODES]
IMPLEMENTATIONS = {"keras": list(CASES), "torch": PIXEL_CASES, "tensorflow": PIXEL_CASES}


def run_impl(which: str, cases: list[str], directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """`which`'s outputs on the named cases (inputs saved in `directory`), all in one process."""
    paths = [str(directory / f"{name}{suffix}.npz") for name in cases for suffix in ("", f"-{which}")]
    proc = subprocess.run([sys.executable, str(SCRIPT), which, *paths], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for name in cases:
        with np.load(directory / f"{name}-{which}.npz") as data:
            out[name] = {k: data[k] for k in data.files}
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """(implementation, case) -> what it produced. One process per implementation for every case, the three
    side by side: importing TensorFlow (tf_keras) or torch costs seconds, the cases themselves milliseconds."""
    directory = tmp_path_factory.mktemp("augment")
    for name, inputs in CASES.items():
        np.savez(directory / f"{name}.npz", **inputs())
    with ThreadPoolExecutor(len(IMPLEMENTATIONS)) as pool:
        runs = {which: pool.submit(run_impl, which, cases, directory) for which, cases in IMPLEMENTATIONS.items()}
    return {(which, name): out for which, run in runs.items() for name, out in run.result().items()}


@pytest.mark.parametrize("mode", FILL_MODES)
def test_both_backends_match_keras_pixel_for_pixel(outputs: Outputs, mode: str) -> None:
    images, params, cfg = pixel_parity_case(mode)
    keras = outputs["keras", f"pixels-{mode}"]["applied"]
    ours = {"numpy": apply_batch(NUMPY_OPS, images, params, mode, cfg.cval),
            "native": native.apply_transforms(images, params, replace(cfg, kernel="native"))}
    for which in ("torch", "tensorflow"):
        result = outputs[which, f"pixels-{mode}"]
        other = "tensorflow" if which == "torch" else "torch"
        assert other not in json.loads(str(result["modules"]))
        ours[which] = result["applied"]
    assert not np.allclose(keras, images)  # the transforms really moved pixels
    for which, out in ours.items():
        error = float(np.max(np.abs(out - keras)))
        print(f"{mode} {which}: max |ours - keras| = {error:.2e}")
        assert out.shape == keras.shape and error <= PIXEL_TOL
    assert np.max(np.abs(ours["torch"] - ours["tensorflow"])) <= PIXEL_TOL
    # The native kernel computes what the numpy path computes, operation for operation: bit for bit.
    assert np.array_equal(ours["native"], ours["numpy"])


def test_native_kernel_is_what_auto_picks_for_numpy_and_refuses_without_a_compiler(tmp_path: Path) -> None:
    images, params, cfg = parity_case("reflect", seed=9)
    assert native.use_native(images, cfg) and not native.use_native(images, replace(cfg, kernel="framework"))
    code = ("import numpy as np\n"
            "from hvdtrain.augment import native\n"
            "from hvdtrain.config import AugmentConfig\n"
            "x = np.zeros((2, 4, 4, 3), np.float32)\n"
            "print('auto', native.use_native(x, AugmentConfig(kernel='auto')))\n"
            "native.use_native(x, AugmentConfig(kernel='native'))\n")
    env = {**os.environ, "CXX": "/bin/false", "HVDTRAIN_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "auto False" in proc.stdout  # auto falls back to the framework kernel
    assert "augment.kernel=native: the native kernel cannot be built (/bin/false failed" in proc.stderr


def test_native_kernel_builds_without_march_native_where_the_compiler_refuses_it(tmp_path: Path) -> None:
    """A compiler that rejects -march=native (some clang/aarch64 versions): the portable build is used, and
    computes the same pixels."""
    wrapper = tmp_path / "cxx"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && { echo "unsupported -march" >&2; '
                       'exit 1; }; done\nexec c++ "$@"\n')
    wrapper.chmod(0o755)
    images, params, cfg = parity_case("wrap", seed=4)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "params.json").write_text(json.dumps(params))
    code = ("import json, sys, numpy as np\n"
            "from dataclasses import replace\n"
            "from hvdtrain.augment import native\n"
            "from hvdtrain.config import AugmentConfig\n"
            f"d = {str(tmp_path)!r}\n"
            "cfg = AugmentConfig(fill_mode='wrap', kernel='native')\n"
            "out = native.apply_transforms(np.load(d + '/images.npy'), json.load(open(d + '/params.json')), cfg)\n"
            "np.save(d + '/out.npy', out)\n")
    env = {**os.environ, "CXX": str(wrapper), "HVDTRAIN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "cache" / "native").glob("*/affine.so"))) == 1  # only the portable build exists
    expected = native.apply_transforms(images, params, replace(cfg, kernel="native"))
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


def test_whole_pixel_shifts_onto_period_boundaries_match_keras(outputs: Outputs) -> None:
    """Integer coordinates that land exactly on SciPy's wrap/reflect period boundaries."""
    batch, params = period_shifts()
    for mode in FILL_MODES:
        keras = outputs["keras", f"periods-{mode}"]["applied"]
        assert np.max(np.abs(apply_batch(NUMPY_OPS, batch, params, mode, 0.0) - keras)) <= PIXEL_TOL, mode


def test_sampler_matches_keras_distributions(outputs: Outputs) -> None:
    """Quantiles of every drawn parameter agree with Keras' own draws (2,000 each), ints stay ints."""
    keras = json.loads(str(outputs["keras", "sampler"]["draws"]))
    assert len(keras) == SAMPLER_DRAWS
    cfg = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in SAMPLER.items()})
    ours = sample_transforms(cfg, SAMPLER_DRAWS, SAMPLER_SHAPE, np.random.default_rng(1))
    assert set(ours[0]) == set(keras[0])
    for key in ("theta", "tx", "ty", "shear", "zx", "zy", "channel_shift_intensity", "brightness"):
        a = np.array([d[key] for d in ours], dtype=float)
        b = np.array([d[key] for d in keras], dtype=float)
        spread = np.ptp(b) or 1.0
        qa, qb = np.quantile(a, [0, 0.1, 0.5, 0.9, 1]), np.quantile(b, [0, 0.1, 0.5, 0.9, 1])
        assert np.max(np.abs(qa - qb)) <= 0.06 * spread, (key, qa, qb)
    # width_shift_range=[0.1, 0.2]: one list value, random sign, times the width (30).
    assert set(np.round([d["ty"] for d in ours], 6)) == {-6.0, -3.0, 3.0, 6.0}
    # height_shift_range=3 (int): whole pixels in (-3, 3).
    assert set(d["tx"] for d in ours) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    zx, zy = np.array([d["zx"] for d in ours]), np.array([d["zy"] for d in ours])
    assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.1 and np.mean(zx != zy) > 0.99
    flips = np.mean([d["flip_horizontal"] for d in ours])
    assert 0.45 < flips < 0.55 and not any(d["flip_vertical"] for d in ours)


def test_shift_rules() -> None:
    rng = np.random.default_rng(0)
    draw = lambda **kw: sample_transforms(AugmentConfig(**kw), 500, (10, 40, 1), rng)  # noqa: E731
    ty = np.array([d["ty"] for d in draw(width_shift_range=0.25)])
    assert -10 <= ty.min() < -9 and 9 < ty.max() <= 10  # fraction of the width 40
    ty = np.array([d["ty"] for d in draw(width_shift_range=2.5)])
    assert -2.5 <= ty.min() < -2 and 2 < ty.max() <= 2.5 and not np.allclose(ty, np.round(ty))  # pixels
    tx = np.array([d["tx"] for d in draw(height_shift_range=0.5)])
    assert -5 <= tx.min() and tx.max() <= 5  # tx follows the height (10), as in Keras
    plain = draw()[0]
    assert plain == {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0,
                     "flip_horizontal": False, "flip_vertical": False, "channel_shift_intensity": None,
                     "brightness": None}


def test_seeding_per_seed_rank_epoch() -> None:
    cfg = AugmentConfig(rotation_range=20, zoom_range=0.2)

    def draw(seed: int, rank: int, epoch: int) -> list[dict]:
        return sample_transforms(cfg, 8, (8, 8, 1), epoch_rng(seed, rank, epoch))

    assert draw(1, 0, 0) == draw(1, 0, 0)
    assert draw(1, 0, 0) != draw(1, 1, 0)
    assert draw(1, 0, 0) != draw(1, 0, 1)
    assert draw(1, 0, 0) != draw(2, 0, 0)


def test_brightness_and_channel_shift() -> None:
    x = np.linspace(0.1, 0.9, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    base = {"theta": 0, "tx": 0, "ty": 0, "shear": 0, "zx": 1, "zy": 1, "flip_horizontal": False,
            "flip_vertical": False}
    out = apply_batch(NUMPY_OPS, x, [{**base, "brightness": 2.5, "channel_shift_intensity": None},
                                     {**base, "brightness": 0.5, "channel_shift_intensity": None}],
                      "nearest", 0.0)
    assert np.allclose(out[0], np.clip(x[0] * 2.5, 0, 1)) and out[0].max() == 1.0
    assert np.allclose(out[1], x[1] * 0.5)
    out = apply_batch(NUMPY_OPS, x, [{**base, "channel_shift_intensity": 0.3, "brightness": None},
                                     {**base, "channel_shift_intensity": -0.3, "brightness": None}],
                      "nearest", 0.0)
    assert np.allclose(out[0], np.clip(x[0] + 0.3, x[0].min(), x[0].max()))
    assert np.allclose(out[1], np.clip(x[1] - 0.3, x[1].min(), x[1].max()))


def test_standardize_matches_keras(outputs: Outputs) -> None:
    images = standardize_images()
    keras = outputs["keras", "standardize"]["standardized"]
    cfg = AugmentConfig(featurewise_center=True, featurewise_std_normalization=True, samplewise_center=True,
                        samplewise_std_normalization=True, rescale=0.5)
    # Two "ranks" each summing half of the set, as the allreduce does, give the global statistics.
    def read(idx: np.ndarray) -> np.ndarray:
        return images[idx]

    parts = [featurewise_stats(read, len(images), r, 2, 0.5, lambda v: v) for r in range(2)]
    assert not np.allclose(parts[0].mean, parts[1].mean)
    stats = featurewise_stats(read, len(images), 0, 1, 0.5, lambda v: v, chunk=5)  # summed in uneven chunks
    assert np.allclose(stats.mean, (images * 0.5).mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(stats.std, (images * 0.5).std(axis=(0, 1, 2)), atol=1e-6)
    assert np.max(np.abs(standardize(images, cfg, stats) - keras)) <= 1e-4


def test_config_errors() -> None:
    from hvdtrain.config import load_config
    from hvdtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="augment.zoom_range"):
        load_config(None, ["augment.zoom_range=1.2"])
    with pytest.raises(ConfigError, match="augment.brightness_range"):
        load_config(None, ["augment.brightness_range=[1.5,0.5]"])
    with pytest.raises(ConfigError, match="augment.fill_mode"):
        load_config(None, ["augment.fill_mode=mirror"])
    with pytest.raises(ConfigError, match="augment.width_shift_range: expected an integer, a number or a list"):
        load_config(None, ["augment.width_shift_range=wide"])
    cfg = load_config(None, ["augment.width_shift_range=3", "augment.height_shift_range=3.0"]).augment
    assert isinstance(cfg.width_shift_range, int) and isinstance(cfg.height_shift_range, float)


def test_augment_preview_writes_a_png(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "preview.png"
    proc = subprocess.run([sys.executable, "-m", "hvdtrain", "augment-preview", "--config",
                           "configs/digits_augment.yaml", "--out", str(out), "--rows", "3", "--variants", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"
        pixels = np.asarray(img)
    # 3 rows x 6 columns of 8x8 digits scaled 12x, 2-pixel gaps.
    assert pixels.shape == (3 * (96 + 2) + 2, 6 * (96 + 2) + 2)
    assert pixels.std() > 20  # real image content, not a blank canvas
    refused = subprocess.run([sys.executable, "-m", "hvdtrain", "augment-preview", "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "sets no random transform" in refused.stderr
