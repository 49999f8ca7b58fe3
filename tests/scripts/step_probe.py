"""What a backend's train_step does with policy.precision, policy.reduce_op and an fp16 overflow, from inside.

    mpirun -np 2 python tests/scripts/step_probe.py {torch|tensorflow} OUT_DIR

One start (each costs seconds) for three probes. Every model is built the way the loop builds it (load_config
-> build_spec -> backend.build). Rank 0 writes three files:

OUT_DIR/dtypes.json, {precision: report} for fp32, bf16 and fp16: the backend's CNN takes one train_step, and
the report holds the dtype of the outputs of the first conv layer, the first dense layer and the logits layer
*during that training forward pass* (torch: forward hooks; Keras: the layers' `call` wrapped before the step
is traced, so the dtype of the tensors in the traced step), Keras' `compute_dtype`/`variable_dtype` of those
layers, the dtypes of the floating-point weights after the step, and whether the step changed the weights.

OUT_DIR/adasum.json: one plain-SGD step (no momentum, so a step at LR lr moves the weights by exactly -lr x the
reduced gradient) of the backend's MLP under reduce_op=average and =adasum. Rank r trains on batch r (two
different random batches; every rank can make both). Each rank's own gradient g_r is measured through the
backend itself: with reduce_op=average both ranks step on batch r, so the average of two identical gradients
is g_r. Then each rank steps on its own batch, once with average and once with adasum. Every step starts from
a fresh build (same seed: the same initial weights, checked). The report:
- average_error: max |update - (g0 + g1) / 2| / max |update|, for the average step;
- adasum_error_per_tensor: the same for the Adasum step, against adasum(g0_t, g1_t) applied to each tensor t
  on its own (Horovod's Adasum works per tensor, also inside a fusion buffer: horovod/common/ops/adasum/adasum.h);
- adasum_error_whole: against adasum applied to all gradients concatenated as one vector (for information);
- adasum_vs_average: ||update_adasum - update_average|| / ||update_average||;
- gradient_cosine: of g0 and g1 (Adasum equals the average only where the two gradients are equal);
- same_start, ranks_identical: every build started from the same weights; both ranks hold the same weights
  after the Adasum step;
where adasum(a, b) = (1 - a.b / (2 |a|^2)) a + (1 - a.b / (2 |b|^2)) b.

OUT_DIR/overflow.json: [rank 0's report, rank 1's] of tests/scripts/overflow_step.py's fp16 overflow steps.

OUT_DIR/restore.json: the LR of a step taken after load_state() (see lr_after_restore).

OUT_DIR/clip.json: policy.grad_clip_norm=0.01 on the MLP, one plain-SGD step with each rank on its own batch:
`clipped_norm`, the norm of the update / lr, which must be the bound (the averaged gradient clipped after the
allreduce), and `unclipped_norm`, the same step's without clipping.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from overflow_step import overflow_report  # this script's folder is on sys.path

from hvdtrain.backend import Backend, get_backend
from hvdtrain.config import load_config
from hvdtrain.training.setup import build_spec

SHAPE, CLASSES = (8, 8, 1), 10
Batch = tuple[np.ndarray, np.ndarray]


def build(backend: Backend, name: str, *overrides: str) -> None:
    """Plain SGD; the same seed on every rank, then every rank takes rank 0's state, as the loop does."""
    cfg = load_config(None, [f"backend={name}", "optim.name=sgd", "optim.momentum=0", *overrides])
    backend.build(build_spec(cfg, SHAPE, CLASSES))
    backend.sync()


def random_batch(seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    return rng.random((16, *SHAPE), dtype=np.float32), rng.integers(0, CLASSES, 16)


# --- compute dtypes --------------------------------------------------------------------------------------------
def torch_probes(model: Any, seen: dict[str, str]) -> dict[str, str]:
    """Forward hooks on the first Conv2d, the first Linear and the last Linear."""
    import torch

    modules = list(model.modules())
    linears = [m for m in modules if isinstance(m, torch.nn.Linear)]
    probes = {"conv": next(m for m in modules if isinstance(m, torch.nn.Conv2d)), "dense": linears[0],
              "logits": linears[-1]}
    for label, module in probes.items():
        def hook(_module: Any, _inputs: Any, out: Any, _label: str = label) -> None:  # None: output unchanged
            seen.setdefault(_label, str(out.dtype).removeprefix("torch."))

        module.register_forward_hook(hook)
    return {}


def keras_probes(model: Any, seen: dict[str, str]) -> dict[str, str]:
    """The same three layers' `call` wrapped, before the first step traces the model."""
    import keras

    denses = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    probes = {"conv": next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)),
              "dense": denses[0], "logits": denses[-1]}
    for label, layer in probes.items():
        def call(*args: Any, _call: Any = layer.call, _label: str = label, **kwargs: Any) -> Any:
            out = _call(*args, **kwargs)
            seen.setdefault(_label, out.dtype.name)
            return out

        layer.call = call
    return {f"{label}_{kind}": getattr(layer, kind) for label, layer in probes.items()
            for kind in ("compute_dtype", "variable_dtype")}


def compute_dtypes(backend: Any, name: str) -> dict[str, dict[str, Any]]:
    batch = random_batch(0)
    reports = {}
    for precision in ("fp32", "bf16", "fp16"):
        build(backend, name, "model.name=cnn", "model.channels=[4]", "model.hidden_units=[8]",
              f"policy.precision={precision}")
        seen: dict[str, str] = {}
        report: dict[str, Any] = (torch_probes if name == "torch" else keras_probes)(backend.model, seen)
        before = backend.weights()
        stats = backend.train_step([batch], 0.1)
        after = backend.weights()
        report |= {f"{label}_output": dtype for label, dtype in seen.items()}
        report["weight_dtypes"] = sorted({str(w.dtype) for w in after.values() if w.dtype.kind == "f"})
        report["loss_finite"] = bool(np.isfinite(stats.loss_sum))
        report["weights_changed"] = any(not np.array_equal(before[k], after[k]) for k in before)
        reports[precision] = report
    return reports


# --- Adasum ----------------------------------------------------------------------------------------------------
def adasum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dot = float(np.dot(a, b))
    return (1 - dot / (2 * float(np.dot(a, a)))) * a + (1 - dot / (2 * float(np.dot(b, b)))) * b


def adasum_update(backend: Backend, name: str) -> dict[str, Any]:
    rank = backend.comm.world().rank
    batches = [random_batch(100), random_batch(101)]
    mlp = ["model.name=mlp", "model.hidden_units=[16]"]
    names: list[str] = []
    starts: list[list[np.ndarray]] = []

    def update(reduce_op: str, batch: Batch, lr: float) -> dict[str, np.ndarray]:
        """One step at `lr` from a fresh build on `batch`: the update divided by `lr` (the reduced gradient),
        by the first build's names (Keras names a second model's layers dense_2, dense_3...)."""
        build(backend, name, *mlp, f"policy.reduce_op={reduce_op}")
        if not names:
            names.extend(backend.weights())
        start = list(backend.weights().values())
        starts.append(start)
        backend.train_step([batch], lr)
        after = backend.weights().values()
        return {k: (w.astype(np.float64) - v) / lr for k, w, v in zip(names, start, after, strict=True)}

    # A different LR for each step: the TensorFlow backend assigns the LR only when it differs from the last one
    # it assigned, while a rebuilt optimizer starts again at optim.lr (build() keeps that cache).
    g0 = update("average", batches[0], 1.0)  # both ranks on batch 0: the average is g_0
    g1 = update("average", batches[1], 0.5)
    average = update("average", batches[rank], 0.25)
    ada = update("adasum", batches[rank], 0.125)
    checksums = backend.comm.allgather_object(float(sum(np.sum(v, dtype=np.float64)
                                                        for v in backend.weights().values())))

    flat = {label: np.concatenate([u[k].ravel() for k in names])
            for label, u in (("g0", g0), ("g1", g1), ("average", average), ("adasum", ada))}
    per_tensor = np.concatenate([adasum(g0[k].ravel(), g1[k].ravel()) for k in names])
    whole = adasum(flat["g0"], flat["g1"])
    scale = float(np.max(np.abs(flat["adasum"])))
    return {
        "tensors": len(names),
        "same_start": all(np.array_equal(a, b) for start in starts[1:] for a, b in zip(start, starts[0], strict=True)),
        "ranks_identical": len(set(checksums)) == 1,
        "gradient_cosine": float(np.dot(flat["g0"], flat["g1"])
                                 / (np.linalg.norm(flat["g0"]) * np.linalg.norm(flat["g1"]))),
        "average_error": float(np.max(np.abs(flat["average"] - (flat["g0"] + flat["g1"]) / 2))
                         / np.max(np.abs(flat["average"]))),
        "adasum_error_per_tensor": float(np.max(np.abs(flat["adasum"] - per_tensor)) / scale),
        "adasum_error_whole": float(np.max(np.abs(flat["adasum"] - whole)) / scale),
        "adasum_vs_average": float(np.linalg.norm(flat["adasum"] - flat["average"])
                                   / np.linalg.norm(flat["average"])),
    }


def lr_after_restore(backend: Backend, name: str) -> dict[str, Any]:
    """A step after load_state() uses the LR it is given. The TensorFlow backend sets the optimizer's LR variable
    only when the LR changes; load_state() brings back the variable's old value, so it must forget what it set."""
    build(backend, name, "model.name=mlp", "model.hidden_units=[16]", "optim.lr=0.05", "optim.momentum=0.0")
    batch = random_batch(200)
    saved = backend.state()
    backend.train_step([batch], 1.0)
    reference = backend.weights()
    backend.load_state(saved)
    backend.train_step([batch], 1.0)
    after = backend.weights()
    return {"max_diff": max(float(np.max(np.abs(after[k] - reference[k]))) for k in reference),
            "lr": backend.step_info().lr}


def clipped_step(backend: Backend, name: str) -> dict[str, Any]:
    """The norm of one plain-SGD step / lr, with and without policy.grad_clip_norm (see the module docstring)."""
    clip, batch = 0.01, random_batch(300 + backend.comm.world().rank)

    def step_norm(lr: float, *overrides: str) -> float:
        build(backend, name, "model.name=mlp", "model.hidden_units=[16]", *overrides)
        start = backend.weights()
        backend.train_step([batch], lr)  # an LR no earlier step used: see adasum_update
        after = backend.weights()
        return float(np.sqrt(sum(np.sum((after[k].astype(np.float64) - start[k]) ** 2) for k in start))) / lr

    return {"clip": clip, "clipped_norm": step_norm(2.0, f"policy.grad_clip_norm={clip}"),
            "unclipped_norm": step_norm(4.0)}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    backend = get_backend(name)
    backend.setup(1)
    world = backend.comm.world()
    assert world.size == 2, "run with 2 ranks (mpirun: Adasum needs Horovod's MPI controller)"
    reports = {"dtypes": compute_dtypes(backend, name), "adasum": adasum_update(backend, name),
               "overflow": backend.comm.allgather_object(overflow_report(backend, name)),
               "restore": lr_after_restore(backend, name), "clip": clipped_step(backend, name)}
    if world.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for key, report in reports.items():
            (out / f"{key}.json").write_text(json.dumps(report, indent=1))
    backend.comm.shutdown()


if __name__ == "__main__":
    main()
