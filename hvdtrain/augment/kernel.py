"""The batch augmentation kernel, written once against a small array interface that numpy, torch and
TensorFlow each provide (`ArrayOps`); the backends only supply the interface.

Geometry reproduces `scipy.ndimage.affine_transform(order=1)` as Keras calls it: every output pixel's
input coordinate goes through SciPy's boundary rule for the fill mode (its `reflect` and `wrap` are not
the usual image-library ones: `wrap` has period n-1), then bilinear interpolation; `constant` gives
`cval` wherever the coordinate falls outside [0, n-1]. Flips are folded into the same resampling; then
channel shift and brightness, in Keras' order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvdtrain.augment.geometry import batch_affine


@dataclass(frozen=True)
class ArrayOps:
    """What the kernel needs from an array library. `xp` offers numpy-style functions (floor,
    where, clip, arange, reshape, asarray, stack, float32/float64/int64); the rest differ by name."""

    xp: Any
    take_rows: Callable[[Any, Any], Any]        # (table (M, C), idx (K,) int64) -> (K, C)
    image_min: Callable[[Any], Any]             # (N, H, W, C) -> (N, 1, 1, 1)
    image_max: Callable[[Any], Any]
    # Optional fast path: bilinear samples of NHWC images at in-range float64 (row, col) maps (N, H, W).
    bilinear: Callable[[Any, Any, Any], Any] | None = None
    # Optional fast path for fill_mode="nearest", whose result is continuous in the coordinates and so
    # needs no float64 boundary decisions: (images, (N, 2, 3) float64 matrices) -> images, or None to
    # leave the batch to the general path.
    nearest_affine: Callable[[Any, Any], Any] | None = None
    # Optional replacement of the whole resampling: (images, (N, 2, 3) float64 matrices, (N,) bool moved,
    # fill_mode, cval) -> images; images not moved are copied (hvdtrain/augment/native.py).
    affine: Callable[[Any, Any, Any, str, float], Any] | None = None


NUMPY_OPS = ArrayOps(
    xp=np,
    take_rows=lambda table, idx: np.take(table, idx, axis=0),
    image_min=lambda x: x.min(axis=(1, 2, 3), keepdims=True),
    image_max=lambda x: x.max(axis=(1, 2, 3), keepdims=True),
)


def _scipy_coordinate(xp: Any, c: Any, n: int, mode: str) -> Any:
    """SciPy's boundary rule for order-1 interpolation: coordinates in [0, n-1] whose plain bilinear
    value equals SciPy's (checked against scipy.ndimage and Keras in tests/unit/augment/test_augment.py)."""
    last = n - 1
    if n == 1:
        return c * 0.0
    if mode in ("nearest", "constant"):
        return xp.clip(c, 0.0, float(last))
    if mode == "reflect":  # SciPy: -c-1 below 0, 2n-c-1 above n-1: a period of 2n
        u = xp.remainder(c, 2.0 * n)
        mapped = xp.where(u >= n, 2.0 * n - 1.0 - u, u)
    else:  # wrap, with SciPy's period of n - 1; a coordinate below 0 on a period boundary maps to n-1
        u = xp.remainder(c, float(last))
        mapped = xp.where(c < 0, xp.where(u == 0, float(last), u), xp.where(c > last, u, c))
    # `reflect` can land in the half pixel beyond an edge, (-1, 0) or (n-1, n); SciPy's interpolation
    # extends its neighbours by the same rule there, which gives the edge pixel itself.
    return xp.clip(mapped, 0.0, float(last))


def affine_sample(ops: ArrayOps, images: Any, matrices: Any, fill_mode: str, cval: float) -> Any:
    """Applies per-image (N, 2, 3) float64 matrices (output (row, col) -> input) to NHWC float32 images."""
    if fill_mode == "nearest" and ops.nearest_affine is not None:
        out = ops.nearest_affine(images, matrices)
        if out is not None:
            return out
    xp = ops.xp
    n, height, width, channels = (int(d) for d in images.shape)
    f64, f32 = xp.float64, xp.float32
    rows = xp.reshape(xp.arange(height, dtype=f64), (1, height, 1))
    cols = xp.reshape(xp.arange(width, dtype=f64), (1, 1, width))

    def coord(axis: int) -> Any:
        m = [xp.reshape(matrices[:, axis, k], (n, 1, 1)) for k in range(3)]
        return rows * m[0] + cols * m[1] + m[2]  # SciPy's order of operations, in float64

    r_in, c_in = coord(0), coord(1)
    r, c = _scipy_coordinate(xp, r_in, height, fill_mode), _scipy_coordinate(xp, c_in, width, fill_mode)
    if ops.bilinear is not None:
        out = ops.bilinear(images, r, c)
    else:
        out = _gather_bilinear(ops, images, r, c)
    if fill_mode == "constant":
        inside = (r_in >= 0) & (r_in <= height - 1) & (c_in >= 0) & (c_in <= width - 1)
        out = xp.where(xp.reshape(inside, (n, height, width, 1)), out, xp.asarray(cval, dtype=f32))
    return out


def _gather_bilinear(ops: ArrayOps, images: Any, r: Any, c: Any) -> Any:
    """Bilinear interpolation by four gathers, for any array library."""
    xp = ops.xp
    n, height, width, channels = (int(d) for d in images.shape)
    f32 = xp.float32
    r0, c0 = xp.floor(r), xp.floor(c)
    fr, fc = xp.asarray(r - r0, dtype=f32), xp.asarray(c - c0, dtype=f32)
    r0i, c0i = xp.asarray(r0, dtype=xp.int64), xp.asarray(c0, dtype=xp.int64)
    r1i = xp.clip(r0i + 1, 0, height - 1)  # its weight is 0 when clipped
    c1i = xp.clip(c0i + 1, 0, width - 1)
    base = xp.reshape(xp.arange(n, dtype=xp.int64), (n, 1, 1)) * (height * width)
    table = xp.reshape(images, (n * height * width, channels))

    def pick(ri: Any, ci: Any) -> Any:
        flat = xp.reshape(base + ri * width + ci, (-1,))
        return xp.reshape(ops.take_rows(table, flat), (n, height, width, channels))

    fr4, fc4 = xp.reshape(fr, (n, height, width, 1)), xp.reshape(fc, (n, height, width, 1))
    top = pick(r0i, c0i) * (1.0 - fc4) + pick(r0i, c1i) * fc4
    bottom = pick(r1i, c0i) * (1.0 - fc4) + pick(r1i, c1i) * fc4
    return top * (1.0 - fr4) + bottom * fr4


def apply_batch(ops: ArrayOps, images: Any, params: Sequence[dict[str, Any]], fill_mode: str,
                cval: float) -> Any:
    """Keras' `apply_transform` for a whole NHWC float32 batch: affine and flips (folded into one
    resampling), channel shift, brightness.

    Brightness multiplies pixel values by the factor and clips to [0, 1] (hvdtrain's image range); Keras
    goes through an 8-bit PIL image there (see docs/augmentation.md).
    """
    xp = ops.xp
    n, height, width = (int(d) for d in images.shape[:3])
    matrices, moved = batch_affine(params, height, width)
    out = images
    if moved.any() and ops.affine is not None:
        out = ops.affine(images, matrices, moved, fill_mode, cval)
    elif moved.any():
        out = affine_sample(ops, images, xp.asarray(matrices, dtype=xp.float64), fill_mode, cval)

    def column(key: str) -> Any:
        return xp.reshape(xp.asarray(np.array([p[key] or 0.0 for p in params], dtype=np.float32)),
                          (n, 1, 1, 1))

    if any(p.get("channel_shift_intensity") is not None for p in params):
        out = xp.clip(out + column("channel_shift_intensity"), ops.image_min(out), ops.image_max(out))
    if any(p.get("brightness") is not None for p in params):
        factors = np.array([1.0 if p.get("brightness") is None else p["brightness"] for p in params],
                           dtype=np.float32)
        out = xp.clip(out * xp.reshape(xp.asarray(factors), (n, 1, 1, 1)), 0.0, 1.0)
    return out
