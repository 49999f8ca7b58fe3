"""The affine map of Keras' `apply_affine_transform`, as SciPy's (row, col) matrix and offset.

Built exactly as Keras builds it (the same products in the same order, the centring offsets, and the
row/column swap Keras makes for channels-last images), so kernels that apply it match Keras pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def keras_affine(params: dict[str, Any], height: int, width: int) -> np.ndarray | None:
    """The 2x3 matrix [A | b] mapping an output pixel (row, col) to its input coordinate, or None when
    the parameters describe no geometric change (Keras then leaves the image untouched)."""
    matrix = None
    theta, tx, ty = params.get("theta", 0), params.get("tx", 0), params.get("ty", 0)
    shear, zx, zy = params.get("shear", 0), params.get("zx", 1), params.get("zy", 1)
    if theta != 0:
        t = np.deg2rad(theta)
        matrix = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    if tx != 0 or ty != 0:
        shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
        matrix = shift if matrix is None else np.dot(matrix, shift)
    if shear != 0:
        s = np.deg2rad(shear)
        shear_m = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
        matrix = shear_m if matrix is None else np.dot(matrix, shear_m)
    if zx != 1 or zy != 1:
        zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
        matrix = zoom if matrix is None else np.dot(matrix, zoom)
    if matrix is None:
        return None
    o_x, o_y = float(height) / 2 - 0.5, float(width) / 2 - 0.5
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    matrix = np.dot(np.dot(offset, matrix), reset)
    # Keras swaps the two spatial axes of the matrix for channels-last images (col axis after row axis).
    matrix[:, [0, 1]] = matrix[:, [1, 0]]
    matrix[[0, 1]] = matrix[[1, 0]]
    return matrix[:2].astype(np.float64)


IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def batch_affine(params: Sequence[dict[str, Any]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, 3) float64 matrices and an (N,) bool mask of the images that change geometrically.

    Flips are folded into the matrices (reading column w-1-c instead of c), which saves a pass over the
    batch; they commute with the channel shift Keras applies between the affine and the flips.
    """
    out, moved = [], []
    for p in params:
        matrix = keras_affine(p, height, width)
        moved.append(matrix is not None or bool(p.get("flip_horizontal")) or bool(p.get("flip_vertical")))
        matrix = IDENTITY.copy() if matrix is None else matrix
        for flag, axis, size in (("flip_horizontal", 1, width), ("flip_vertical", 0, height)):
            if p.get(flag):
                matrix[:, 2] += matrix[:, axis] * (size - 1)
                matrix[:, axis] = -matrix[:, axis]
        out.append(matrix)
    return np.stack(out), np.array(moved, dtype=bool)
