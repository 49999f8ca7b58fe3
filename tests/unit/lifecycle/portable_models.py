"""Builds every built-in architecture under ONE framework with non-trivial BatchNorm statistics and moves it
through the portable arrays (torch_backend/portable.py, tf_backend/portable.py), as `hvdtrain convert` does.
Tests only (tests/unit/lifecycle/test_convert_portable.py).

Usage: python portable_models.py torch|tensorflow DIR
  writes DIR/<framework>-<case>.npz (its portable arrays and its logits on a fixed batch), then DIR/<framework>.done;
  once DIR/<other framework>.done is there (the test runs both at once), loads each DIR/<other framework>-<case>.npz
  into a fresh model of its own and reports (JSON, last line) how far its logits are from the other framework's,
  with the other checks of the test.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.config import load_config

CASES = {  # case -> (overrides, input shape)
    "mlp": (["model.name=mlp", "model.hidden_units=[32,16]", "model.dropout=0.5"], (8, 8, 1)),
    "mlp-rgb": (["model.name=mlp", "model.hidden_units=[16]"], (9, 7, 3)),  # H-W-C reorder of a 3-channel input
    "cnn": (["model.name=cnn", "model.channels=[8,16]", "model.hidden_units=[32]"], (15, 12, 3)),
    "cnn-digits": (["model.name=cnn", "model.channels=[8]", "model.hidden_units=[]"], (8, 8, 1)),
    "mobilenet": (["model.name=mobilenet", "model.width_multiplier=0.5"], (32, 32, 3)),
    "resnet": (["model.name=resnet", "model.depth=8", "model.width_multiplier=0.5"], (32, 32, 3)),
    "resnet50": (["model.name=resnet50", "model.width_multiplier=0.25", "model.hidden_units=[16]",
                  "model.dropout=0.5"], (32, 32, 3)),
}
CLASSES, BATCHES_TRACKED = 10, 7


def batch(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(1).random((4, *shape), dtype=np.float32)


def exchange(directory: Path, framework: str, other: str) -> None:
    """Says that this side's arrays are written, and waits until the other side's are."""
    (directory / f"{framework}.done").touch()
    while not (directory / f"{other}.done").exists():
        time.sleep(0.02)


def read_case(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The portable arrays and the logits saved in `path`."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)], saved["logits"]


def torch_side(directory: Path) -> dict[str, Any]:
    import torch

    from torch_backend.models import build_model
    from torch_backend.portable import exact_float32, load_portable, portable_arrays, portable_names

    exact_float32()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()  # type: ignore[no-any-return]

    report: dict[str, Any] = {}
    for case, (overrides, shape) in CASES.items():
        cfg = load_config(None, overrides).model
        model = build_model(cfg, shape, CLASSES)
        with torch.no_grad():  # BatchNorm as after training: nowhere near its initial 1, 0, 0, 1
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    size = module.num_features
                    module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, size).astype(np.float32)))
                    module.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, size).astype(np.float32)))
                    module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, size).astype(np.float32)))
                    module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size).astype(np.float32)))
        arrays = portable_arrays(model, shape, cfg.name)
        np.savez(directory / f"torch-{case}.npz", *arrays, logits=logits(model, batch(shape)))
        report[case] = {"tensors": len(arrays), "names": portable_names(model, shape, cfg.name),
                        "state": len(model.state_dict())}
    # A mismatch is refused with the architecture and the first differing tensor named, nothing changed.
    cnn = build_model(load_config(None, CASES["cnn"][0]).model, CASES["cnn"][1], CLASSES)
    before = [p.detach().clone() for p in cnn.parameters()]
    fewer, _ = read_case(directory / "torch-cnn-digits.npz")
    right, _ = read_case(directory / "torch-cnn.npz")
    errors = []
    for arrays in (fewer, [*right[:2], np.zeros((3, 3, 8, 32), np.float32), *right[3:]]):
        try:
            load_portable(cnn, arrays, CASES["cnn"][1], "model.name=cnn")
        except ValueError as exc:
            errors.append(str(exc))
    report["errors"] = errors
    report["unchanged_after_error"] = all(torch.equal(a, b) for a, b in zip(before, cnn.parameters(), strict=True))

    exchange(directory, "torch", "tensorflow")
    for case, (overrides, shape) in CASES.items():
        cfg = load_config(None, overrides).model
        tf_arrays, tf_logits = read_case(directory / f"tensorflow-{case}.npz")
        torch.manual_seed(1)
        fresh = build_model(cfg, shape, CLASSES)
        entry = report[case]
        entry["loaded"] = load_portable(fresh, tf_arrays, shape, cfg.name, BATCHES_TRACKED)
        entry["max_abs_diff"] = float(np.abs(logits(fresh, batch(shape)) - tf_logits).max())
        entry["logit_scale"] = float(np.abs(tf_logits).max())
        entry["batches_tracked"] = sorted({int(b) for n, b in fresh.state_dict().items()
                                           if n.endswith("num_batches_tracked")})
        entry["round_trip"] = all(np.array_equal(a, b) for a, b in
                                  zip(portable_arrays(fresh, shape, cfg.name), tf_arrays, strict=True))
    return report


def tf_side(directory: Path) -> dict[str, Any]:
    import keras

    from tf_backend.models import build_model
    from tf_backend.portable import exact_float32, load_portable, portable_arrays, portable_names

    exact_float32()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    def logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    report: dict[str, Any] = {}
    for case, (overrides, shape) in CASES.items():
        cfg = load_config(None, overrides).model
        model = build_model(cfg, shape, CLASSES)
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                size = layer.gamma.shape[0]
                layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))
                layer.beta.assign(rng.normal(0, 0.2, size).astype(np.float32))
                layer.moving_mean.assign(rng.normal(0, 0.5, size).astype(np.float32))
                layer.moving_variance.assign(rng.uniform(0.5, 2.0, size).astype(np.float32))
        arrays = portable_arrays(model, shape, cfg.name)
        np.savez(directory / f"tensorflow-{case}.npz", *arrays, logits=logits(model, batch(shape)))
        report[case] = {"tensors": len(arrays), "names": portable_names(model, shape, cfg.name),
                        "variables": len(model.variables)}
    errors = []
    mobilenet = build_model(load_config(None, CASES["mobilenet"][0]).model, CASES["mobilenet"][1], CLASSES)
    try:
        load_portable(mobilenet, read_case(directory / "tensorflow-cnn.npz")[0], (32, 32, 3), "model.name=mobilenet")
    except ValueError as exc:
        errors.append(str(exc))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # not built by build_model
    try:
        portable_arrays(plain, (4, 1, 1), "a Sequential")
    except ValueError as exc:
        errors.append(str(exc))
    report["errors"] = errors

    exchange(directory, "tensorflow", "torch")
    for case, (overrides, shape) in CASES.items():
        cfg = load_config(None, overrides).model
        torch_arrays, torch_logits = read_case(directory / f"torch-{case}.npz")
        fresh = build_model(cfg, shape, CLASSES)
        entry = report[case]
        entry["loaded"] = load_portable(fresh, torch_arrays, shape, cfg.name)
        entry["max_abs_diff"] = float(np.abs(logits(fresh, batch(shape)) - torch_logits).max())
        entry["logit_scale"] = float(np.abs(torch_logits).max())
        entry["round_trip"] = all(np.array_equal(a, b) for a, b in
                                  zip(portable_arrays(fresh, shape, cfg.name), torch_arrays, strict=True))
    return report


if __name__ == "__main__":
    framework, out_dir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(torch_side(out_dir) if framework == "torch" else tf_side(out_dir)))
