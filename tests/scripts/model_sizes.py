"""Prints, as JSON, the trainable-parameter count and output shape of every built-in architecture under one
backend (tests only; one framework per process). Usage: python model_sizes.py torch|tensorflow"""

import json
import sys

from hvdtrain.config import load_config

name = sys.argv[1]
out = {}
VARIANTS = (["model.name=mobilenet"], ["model.name=mobilenet", "model.width_multiplier=0.5"],
            ["model.name=resnet", "model.depth=8"], ["model.name=resnet"],
            ["model.name=resnet", "model.width_multiplier=2"],
            ["model.name=cnn"], ["model.name=mlp", "model.dropout=0.5"])
for ov in VARIANTS:
    cfg = load_config(None, ov)
    for shape in ((8, 8, 1), (32, 32, 3)):
        if name == "torch":
            import torch

            from torch_backend.models import build_model
            m = build_model(cfg.model, shape, 10)
            n = sum(p.numel() for p in m.parameters())
            y = m(torch.zeros(2, shape[2], shape[0], shape[1])).shape
        else:
            import numpy as np

            from tf_backend.models import build_model
            m = build_model(cfg.model, shape, 10)
            n = int(sum(np.prod(v.shape) for v in m.trainable_variables))
            y = m(np.zeros((2, *shape), "float32")).shape
        out[" ".join(ov) + str(shape)] = [n, list(y)]
print(json.dumps(out))
