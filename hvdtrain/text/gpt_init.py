"""model.name: gpt's initial weights, drawn once in numpy from the run's seed and given to either framework, so
that a config starts from the same weights on both backends (not just the same distributions): then the two
train alike step by step, up to float rounding (docs/language-models.md).

GPT-2's initialisation, in torch's parameter names and layouts (Linear weights (out, in)): every matrix and
embedding normal(0, 0.02), each block's two residual projections (attn.c_proj, mlp.c_proj) normal(0, 0.02 /
sqrt(2 x n_layer)), biases zero, LayerNorm weights one. tf_backend/gpt.py's `torch_named_variables` maps the
names to Keras' variables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def gpt_parameter_shapes(cfg: Any, vocab_size: int, block_size: int) -> dict[str, tuple[int, ...]]:
    """Every parameter of the network by torch's name, in torch's registration order."""
    width = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab_size, width), "wpe.weight": (block_size, width)}

    def linear(name: str, out: int, inp: int) -> None:
        shapes[f"{name}.weight"] = (out, inp)
        if cfg.bias:
            shapes[f"{name}.bias"] = (out,)

    def norm(name: str) -> None:
        shapes[f"{name}.weight"] = (width,)
        if cfg.bias:
            shapes[f"{name}.bias"] = (width,)

    for i in range(cfg.n_layer):
        norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.c_attn", 3 * width, width)
        linear(f"h.{i}.attn.c_proj", width, width)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", 4 * width, width)
        linear(f"h.{i}.mlp.c_proj", width, 4 * width)
    norm("ln_f")
    return shapes


def initial_gpt_weights(cfg: Any, vocab_size: int, block_size: int, seed: int) -> dict[str, np.ndarray]:
    """The initial float32 weights by torch's name and layout, the same for a (config, seed) on every machine."""
    rng = np.random.default_rng([seed, 2])  # its own stream: nothing else drawn from the seed shifts it
    residual = 0.02 / math.sqrt(2 * cfg.n_layer)
    weights = {}
    for name, shape in gpt_parameter_shapes(cfg, vocab_size, block_size).items():
        if name.endswith(".bias"):
            weights[name] = np.zeros(shape, np.float32)
        elif len(shape) == 1:  # a LayerNorm's scale
            weights[name] = np.ones(shape, np.float32)
        else:
            std = residual if name.endswith("c_proj.weight") else 0.02
            weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return weights
