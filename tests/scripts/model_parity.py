"""Builds every built-in architecture under ONE framework and reports, as JSON on the last line, per variant:
the output shape, each trainable variable's size and initial standard deviation (in creation order), and the
output for a fixed input batch. With `torch DIR` the torch weights (in Keras layout) and outputs are also
saved to DIR; with `tensorflow DIR` the Keras models load those weights and report how far their outputs
are from torch's. Tests only (tests/unit/backends/test_architecture_parity.py).

Usage: python model_parity.py torch|tensorflow DIR
  `tensorflow` reads a line on stdin before it loads the weights, so that it can be started (and import
  TensorFlow) while `torch` runs: the test sends the line once torch has written them.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from hvdtrain.config import load_config

VARIANTS = (("mobilenet", ["model.name=mobilenet"]),
            ("mobilenet-x0.5", ["model.name=mobilenet", "model.width_multiplier=0.5"]),
            ("resnet-8", ["model.name=resnet", "model.depth=8"]),
            ("resnet-20", ["model.name=resnet", "model.depth=20"]),
            ("resnet-8-x0.5", ["model.name=resnet", "model.depth=8", "model.width_multiplier=0.5"]),
            ("cnn", ["model.name=cnn"]),
            ("mlp", ["model.name=mlp", "model.hidden_units=[64,32]", "model.dropout=0.5"]))
SHAPES = ((8, 8, 1), (32, 32, 3), (15, 12, 3))  # digits, CIFAR, odd and non-square
# ResNet-50 is slow to build in Keras (about 1 s): only an ImageNet-headed one on 64x64 (every stage's input is
# even, where Keras' "same" would pad asymmetrically), and a thin one with a hidden head on an odd small size.
RESNET50_CASES = (("resnet50", ["model.name=resnet50"], (64, 64, 3), 1000),
                  ("resnet50-x0.25-head", ["model.name=resnet50", "model.width_multiplier=0.25",
                                           "model.hidden_units=[16]", "model.dropout=0.5"], (15, 12, 3), 10))


# model.name=gpt: (key, overrides, block size, vocabulary). The first is docs/language-models.md's baby GPT.
GPT_CASES = (("gpt[64]-v65", ["task=language_model", "data.name=tokens", "model.name=gpt"], 64, 65),
             ("gpt-bias-2x3x48[16]-v50", ["task=language_model", "data.name=tokens", "model.name=gpt",
                                          "model.bias=true", "model.n_layer=2", "model.n_head=3",
                                          "model.n_embd=48"], 16, 50))


def tokens(block: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (3, block))


def torch_gpt(out_dir: Path) -> dict:
    """Per GPT case: sizes and stds in torch's parameter order, the logits, and whether generation's cached steps
    give the logits of the whole sequence (the weights go to DIR by name)."""
    import torch

    from torch_backend.models import build_model

    report = {}
    for key, overrides, block, vocab in GPT_CASES:
        model = build_model(load_config(None, overrides).model, (block,), vocab).eval()
        x = torch.from_numpy(tokens(block, vocab))
        with torch.no_grad():
            y = model(x).numpy()
            logits, cache = model.decode(x[:, :5], None)
            steps = [logits]
            for i in range(5, block):
                logits, cache = model.decode(x[:, i:i + 1], cache)
                steps.append(logits)
        cached = torch.stack(steps, dim=1).numpy()
        named = {n: p.detach().numpy() for n, p in model.named_parameters()}
        np.savez(out_dir / f"{key}.npz", y=y, **named)
        report[key] = {"out": list(y.shape), "vars": [[int(w.size), float(w.std())] for w in named.values()],
                       "names": list(named), "cache_max_diff": float(np.abs(cached - y[:, 4:]).max())}
    return report


def tf_gpt(in_dir: Path) -> dict:
    import tensorflow as tf

    from tf_backend.gpt import generation_functions, network, torch_named_variables
    from tf_backend.models import build_model

    report = {}
    for key, overrides, block, vocab in GPT_CASES:
        model = build_model(load_config(None, overrides).model, (block,), vocab)
        named = torch_named_variables(model)
        assert len(named) == len(model.trainable_variables)
        entry = {"out": list(model(tokens(block, vocab), training=False).shape), "names": list(named),
                 "vars": [[int(np.prod(v.shape)), float(np.std(np.asarray(v)))] for v, _ in named.values()]}
        with np.load(in_dir / f"{key}.npz") as saved:
            torch_y = saved["y"]
            # Both frameworks draw gpt's initial weights from the same numpy stream: the same logits before copying.
            initial = np.asarray(model(tokens(block, vocab), training=False))
            entry["initial_max_rel_diff"] = float(np.abs(initial - torch_y).max() / np.abs(torch_y).max())
            for name, (variable, transposed) in named.items():
                variable.assign(saved[name].T if transposed else saved[name])
        x = tokens(block, vocab)
        y = np.asarray(model(x, training=False))
        entry["max_rel_diff"] = float(np.abs(y - torch_y).max() / np.abs(torch_y).max())
        prefill, step = generation_functions(network(model))  # what `generate` runs: the step compiled by XLA
        logits, keys, values = prefill(x[:, :5].astype(np.int32))
        steps = [np.asarray(logits)]
        for i in range(5, block):
            logits, keys, values = step(x[:, i:i + 1].astype(np.int32), keys, values, tf.constant(i, tf.int32))
            steps.append(np.asarray(logits))
        entry["cache_max_diff"] = float(np.abs(np.stack(steps, axis=1) - y[:, 4:]).max())
        report[key] = entry
    return report


def cases() -> list[tuple[str, list[str], tuple[int, int, int], int]]:
    """(report key, overrides, input shape, classes) of every model the script builds."""
    out = [(f"{tag}{list(shape)}", overrides, shape, 10) for tag, overrides in VARIANTS for shape in SHAPES]
    return out + [(f"{tag}{list(shape)}", overrides, shape, classes)
                  for tag, overrides, shape, classes in RESNET50_CASES]


def inputs(shape: tuple[int, int, int]) -> np.ndarray:
    return np.random.default_rng(0).random((3, *shape), dtype=np.float32)


def torch_side(out_dir: Path) -> dict:
    import torch

    from torch_backend.models import build_model

    torch.manual_seed(0)
    report = {}
    for key, overrides, shape, classes in cases():
        model = build_model(load_config(None, overrides).model, shape, classes).eval()
        flat_inputs: list[tuple] = []
        for module in model.modules():  # the shape reaching each Flatten, to reorder the next Linear
            if isinstance(module, torch.nn.Flatten):
                module.register_forward_hook(lambda m, i, o, seen=flat_inputs: seen.append(tuple(i[0].shape[1:])))
        with torch.no_grad():
            y = model(torch.from_numpy(inputs(shape)).permute(0, 3, 1, 2)).numpy()
        weights, stats, pending_flatten = [], [], None
        for module in model.modules():
            if isinstance(module, torch.nn.Flatten):
                pending_flatten = flat_inputs.pop(0)
            for p in module.parameters(recurse=False):
                w = p.detach().numpy()
                stats.append([int(w.size), float(w.std())])
                if w.ndim == 4:  # (out, in/groups, kh, kw) -> (kh, kw, in, out), depthwise (kh, kw, C, 1)
                    w = w.transpose(2, 3, 0, 1) if module.groups > 1 else w.transpose(2, 3, 1, 0)
                elif w.ndim == 2:
                    if pending_flatten is not None and len(pending_flatten) == 3:  # NCHW -> NHWC flatten
                        c, h, wd = pending_flatten
                        w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
                    pending_flatten = None
                    w = w.T
                weights.append(np.ascontiguousarray(w))
        np.savez(out_dir / f"{key}.npz", *weights, y=y)
        report[key] = {"out": list(y.shape), "vars": stats}
    return report


def tf_side(in_dir: Path) -> dict:
    import keras

    from tf_backend.models import build_model

    # Keras lists a functional model's variables by graph depth (a residual shortcut after the body's second
    # conv); torch by registration. Layer creation order is what both builders write, so compare in that.
    # Recorded on the layer itself: an id() of a layer of an earlier, collected model can be reused.
    created = itertools.count()
    original_init = keras.layers.Layer.__init__

    def recording_init(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        if not hasattr(self, "_parity_creation_index"):
            self._parity_creation_index = next(created)

    keras.layers.Layer.__init__ = recording_init
    keras.utils.set_random_seed(0)
    sys.stdin.readline()  # torch's weights are in in_dir
    report = {}
    for key, overrides, shape, classes in cases():
        model = build_model(load_config(None, overrides).model, shape, classes)
        x = inputs(shape)
        layers = sorted((la for la in model._flatten_layers(include_self=False) if la.trainable_weights),
                        key=lambda la: la._parity_creation_index)
        variables = [v for la in layers for v in la.trainable_weights]
        assert len(variables) == len(model.trainable_variables)
        entry = {"out": list(model(x, training=False).shape),
                 "vars": [[int(np.prod(v.shape)), float(np.std(keras.ops.convert_to_numpy(v)))] for v in variables]}
        with np.load(in_dir / f"{key}.npz") as saved:
            torch_y = saved["y"]
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        if [tuple(w.shape) for w in weights] == [tuple(v.shape) for v in variables]:
            for v, w in zip(variables, weights, strict=True):
                v.assign(w)
            y = np.array(model(x, training=False))
            entry["max_rel_diff"] = float(np.abs(y - torch_y).max() / np.abs(torch_y).max())
        else:
            entry["max_rel_diff"] = None  # layouts differ: the test fails on the variable sizes anyway
        report[key] = entry
    return report


if __name__ == "__main__":
    framework, directory = sys.argv[1], Path(sys.argv[2])
    result = ({**torch_side(directory), **torch_gpt(directory)} if framework == "torch" else
              {**tf_side(directory), **tf_gpt(directory)})
    print(json.dumps(result))
