"""The affine map of Keras' `apply_affine_transform`, as SciPy's (row, col) matrix and offset, for a batch.

Built as Keras builds it (rotation @ shift @ shear @ zoom, the centring offsets, and the row/column swap
Keras makes for channels-last images), so kernels that apply it match Keras pixel for pixel. Keras
multiplies only the components that are not the identity; multiplying by an identity is exact, so doing
all images at once with identities in place gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _column(params: Sequence[dict[str, Any]], key: str, default: float) -> np.ndarray:
    return np.array([float(p.get(key, default)) for p in params], dtype=np.float64)


def _stack(rows: list[list[Any]], n: int) -> np.ndarray:
    """(n, 3, 3) from a 3x3 nested list of scalars and (n,) arrays."""
    return np.stack([np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in row], -1)
                     for row in rows], -2)


def batch_affine(params: Sequence[dict[str, Any]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, 3) float64 matrices [A | b] mapping an output pixel (row, col) to its input coordinate, and an
    (N,) bool mask of the images that change geometrically.

    Flips are folded into the matrices (reading column w-1-c instead of c), which saves a pass over the
    batch; they commute with the channel shift Keras applies between the affine and the flips.
    """
    n = len(params)
    theta = np.deg2rad(_column(params, "theta", 0.0))
    tx, ty = _column(params, "tx", 0.0), _column(params, "ty", 0.0)
    shear = np.deg2rad(_column(params, "shear", 0.0))
    zx, zy = _column(params, "zx", 1.0), _column(params, "zy", 1.0)
    flip_h = np.array([bool(p.get("flip_horizontal")) for p in params], dtype=bool)
    flip_v = np.array([bool(p.get("flip_vertical")) for p in params], dtype=bool)
    # A component Keras would skip becomes an exact identity here: cos(0) = 1 and sin(0) = 0 exactly.
    cos, sin = np.cos(theta), np.sin(theta)
    cos_s, sin_s = np.cos(shear), np.sin(shear)
    rotation = _stack([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], n)
    shift = _stack([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n)
    shearing = _stack([[1, -sin_s, 0], [0, cos_s, 0], [0, 0, 1]], n)
    zoom = _stack([[zx, 0, 0], [0, zy, 0], [0, 0, 1]], n)
    o_x, o_y = float(height) / 2 - 0.5, float(width) / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    matrix = offset @ (((rotation @ shift) @ shearing) @ zoom) @ reset
    # Keras swaps the two spatial axes of the matrix for channels-last images (col axis after row axis).
    matrix = matrix[:, [1, 0, 2]][:, :, [1, 0, 2]][:, :2].copy()
    for flags, axis, size in ((flip_h, 1, width), (flip_v, 0, height)):
        matrix[flags, :, 2] += matrix[flags, :, axis] * (size - 1)
        matrix[flags, :, axis] = -matrix[flags, :, axis]
    geometric = (theta != 0) | (tx != 0) | (ty != 0) | (shear != 0) | (zx != 1) | (zy != 1)
    return matrix, geometric | flip_h | flip_v
