"""Prints, as JSON, one backend's loss terms next to their formulas computed in numpy (tests only):
the L1/L2 penalty of a freshly built model, label-smoothed cross-entropy and the distillation loss on fixed
logits. Usage: python loss_values.py torch|tensorflow"""

from __future__ import annotations

import json
import sys

import numpy as np

from hvdtrain.backend import get_backend
from hvdtrain.config import load_config
from hvdtrain.training.setup import build_spec

name = sys.argv[1]
cfg = load_config(None, [f"backend={name}", "regularization.l1=0.003", "regularization.l2=0.02"])
backend = get_backend(name)
backend.setup(1)
backend.build(build_spec(cfg, (8, 8, 1), 10))
kernels = [w for w in backend.weights().values() if w.ndim > 1]
expected_penalty = sum(0.003 * np.abs(w).sum() + 0.02 * np.square(w).sum() for w in kernels)

rng = np.random.default_rng(0)
student, teacher = rng.normal(size=(6, 10)).astype(np.float32) * 3, rng.normal(size=(6, 10)).astype(np.float32) * 3
labels = rng.integers(0, 10, 6)
T, alpha, eps = 3.0, 0.7, 0.1


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))


targets = np.full((6, 10), eps / 10) + np.eye(10)[labels] * (1 - eps)
smoothed_ce = float(-(targets * log_softmax(student)).sum(1).mean())
plain_ce = float(-log_softmax(student)[np.arange(6), labels].mean())
log_t, log_s = log_softmax(teacher / T), log_softmax(student / T)
kl = float((np.exp(log_t) * (log_t - log_s)).sum(1).mean())
expected_distill = alpha * T * T * kl + (1 - alpha) * smoothed_ce

if name == "torch":
    import torch
    import torch.nn.functional as F

    from torch_backend.losses import distillation_loss
    s, t, y = torch.tensor(student), torch.tensor(teacher), torch.tensor(labels)
    distill = float(distillation_loss(s, t, y, T, alpha, eps))
    smoothed = float(F.cross_entropy(s, y, label_smoothing=eps))
else:
    import tensorflow as tf

    from tf_backend.losses import cross_entropy, distillation_loss
    s, t, y = tf.constant(student), tf.constant(teacher), tf.constant(labels)
    distill = float(distillation_loss(s, t, y, T, alpha, eps))
    smoothed = float(tf.reduce_mean(cross_entropy(s, y, eps)))
print(json.dumps({"penalty": backend.regularization_penalty(), "expected_penalty": float(expected_penalty),
                  "distill": distill, "expected_distill": expected_distill, "smoothed": smoothed,
                  "expected_smoothed": smoothed_ce, "plain": plain_ce}))
backend.comm.shutdown()
