"""Applies the same optimizer steps on one framework and saves the weights after every step (tests only).

Usage: python optimizer_trajectory.py torch|tensorflow CASE[,CASE...]|all OUT.npz

Each case is a config (CASES: overrides for hvdtrain.config.load_config) run for STEPS steps over a few
variables of different shapes, from the same initial weights (numpy, fixed seed). The gradient of step t is
computed in numpy from the framework's current weights, g = C * w + noise[t] (noise: numpy, fixed seed), so
weight decay and momentum interact as in training, and both frameworks see the same gradients as long as
their weights agree. The LR of step t is hvdtrain's own schedule (warmup, then cosine) and is set the way
each backend's train_step sets it: tf_backend's optimizer.learning_rate = lr, then optimizer.apply in a
tf.function; torch_backend's group["lr"] = lr * group["lr_mult"], clip_grad_norm_ when policy.grad_clip_norm
is set, then optimizer.step(). The frameworks are only imported inside run_torch / run_tensorflow: never
both in one process.

OUT.npz holds, per case: "CASE/NAME" (STEPS + 1, *shape) float32 weights (row 0: the initial weights),
"CASE/lr" the LR the optimizer held at each step, and on torch "CASE/grad_norm" the global gradient norm
before clipping (clip_grad_norm_'s return value) and "CASE/clip" policy.grad_clip_norm (NaN: none).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from hvdtrain.config import Config, load_config
from hvdtrain.training.schedule import LRSchedule

STEPS_PER_EPOCH, EPOCHS, WARMUP_EPOCHS, WORLD = 6, 5, 1, 4  # 30 steps: 6 of warmup, then cosine
STEPS = STEPS_PER_EPOCH * EPOCHS
SHAPES = {"kernel": (5, 4), "bias": (4,), "conv": (3, 3, 2, 2)}  # a matrix, a vector, a 4-d kernel
C, NOISE = 0.5, 0.3

_SGD = ["optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9"]
_ADAM = ["optim.lr=0.005", "optim.beta1=0.9", "optim.beta2=0.999", "optim.eps=1e-8"]
CASES: dict[str, list[str]] = {
    "sgd_momentum": _SGD,
    "sgd_nesterov": [*_SGD, "optim.nesterov=true"],
    "sgd_weight_decay": [*_SGD, "optim.weight_decay=0.05", "policy.grad_clip_norm=2.6",
                         "optim.param_groups=['bias=3']"],
    "adam": ["optim.name=adam", *_ADAM],
    "adam_weight_decay": ["optim.name=adam", *_ADAM, "optim.weight_decay=0.05", "policy.grad_clip_norm=3.0"],
    "adamw": ["optim.name=adamw", *_ADAM, "optim.weight_decay=0.1", "optim.param_groups=['conv=0.1']"],
    # Decay on the matrix and the kernel only, not on the bias (a vector).
    "adamw_matrices": ["optim.name=adamw", *_ADAM, "optim.weight_decay=0.1", "optim.weight_decay_on=matrices"],
    "sgd_matrices": [*_SGD, "optim.weight_decay=0.05", "optim.weight_decay_on=matrices"],
}


def config(case: str) -> Config:
    return load_config(None, [*CASES[case], "optim.schedule=cosine", f"policy.warmup_epochs={WARMUP_EPOCHS}"])


def schedule(cfg: Config) -> list[float]:
    """The LR of every step: warmup from optim.lr to the LR scaled by WORLD ranks, then cosine."""
    sched = LRSchedule.from_config(cfg.optim, cfg.optim.lr * WORLD, WARMUP_EPOCHS, STEPS_PER_EPOCH, EPOCHS)
    return [sched.at(t) for t in range(STEPS)]


def initial_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {name: rng.normal(0.0, 0.5, shape).astype(np.float32) for name, shape in SHAPES.items()}


NOISES = [{name: (np.random.default_rng([99, t]).normal(0.0, NOISE, shape)).astype(np.float32)
           for name, shape in SHAPES.items()} for t in range(STEPS)]


def gradients(t: int, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: (np.float32(C) * weights[name] + NOISES[t][name]).astype(np.float32) for name in SHAPES}


def run_torch(case: str) -> dict[str, Any]:
    import torch

    from torch_backend.backend import make_optimizer, param_groups

    cfg = config(case)
    params = {name: torch.nn.Parameter(torch.from_numpy(w.copy())) for name, w in initial_weights().items()}
    optimizer = make_optimizer(cfg.optim, param_groups(list(params.items()), cfg.optim))  # as TorchBackend.build
    clip = cfg.policy.grad_clip_norm
    out: dict[str, list] = {name: [p.detach().numpy().copy()] for name, p in params.items()}
    out["lr"], out["grad_norm"], out["clip"] = [], [], [np.nan if clip is None else clip]
    for t, lr in enumerate(schedule(cfg)):
        for group in optimizer.param_groups:  # as TorchBackend.train_step
            group["lr"] = lr * group["lr_mult"]
        grads = gradients(t, {name: p.detach().numpy() for name, p in params.items()})
        for name, p in params.items():
            p.grad = torch.from_numpy(grads[name])
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params.values()]))
        if clip is not None:
            total = torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        optimizer.step()
        group = optimizer.param_groups[0]
        out["lr"].append(group["lr"] / group["lr_mult"])
        out["grad_norm"].append(float(total))
        for name, p in params.items():
            out[name].append(p.detach().numpy().copy())
    return out


def run_tensorflow(case: str) -> dict[str, Any]:

    import keras
    import tensorflow as tf

    from tf_backend.backend import make_optimizer, per_variable_rules

    cfg = config(case)
    variables = [keras.Variable(w, name=name) for name, w in initial_weights().items()]
    assert [v.path for v in variables] == list(SHAPES)
    optimizer = make_optimizer(cfg.optim, cfg.policy.grad_clip_norm)
    per_variable_rules(optimizer, variables, cfg.optim)  # as TensorFlowBackend.build: before build
    optimizer.build(variables)

    @tf.function
    def apply(grads: list[tf.Tensor]) -> None:  # traced, like the backend's step
        optimizer.apply(grads, variables)

    out: dict[str, list] = {v.path: [v.numpy()] for v in variables}
    out["lr"] = []
    for t, lr in enumerate(schedule(cfg)):
        optimizer.learning_rate = lr  # as TensorFlowBackend.train_step
        grads = gradients(t, {v.path: v.numpy() for v in variables})
        apply([tf.constant(grads[v.path]) for v in variables])
        out["lr"].append(float(np.asarray(optimizer.learning_rate)))
        for v in variables:
            out[v.path].append(v.numpy())
    return out


def main() -> None:
    framework, which, path = sys.argv[1:]
    run = {"torch": run_torch, "tensorflow": run_tensorflow}[framework]
    cases = list(CASES) if which == "all" else which.split(",")
    arrays = {}
    for case in cases:
        for key, values in run(case).items():
            arrays[f"{case}/{key}"] = np.asarray(values, dtype=np.float64 if key in ("lr", "grad_norm", "clip")
                                                 else np.float32)
    np.savez(path, **arrays)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
