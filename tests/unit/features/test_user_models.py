"""User models by import path: every broken contract is a one-line ConfigError naming the fix, lazy torch layers
and Keras models without an Input are built before training, and the model section is validated early.
Torch runs in this process; the Keras checks run in a subprocess (one framework per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO

from hvdtrain.config import ModelConfig, load_config
from hvdtrain.errors import ConfigError
from hvdtrain.features.user_model import load_user_model
from torch_backend.models import build_model

BUILDERS = '''
from torch import nn


def good(cfg, input_shape, num_classes):
    h, w, c = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, 16), nn.ReLU(), nn.Dropout(cfg.dropout),
                         nn.Linear(16, num_classes))


class Net(nn.Module):  # a class is a builder too
    def __init__(self, cfg, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(input_shape[2], 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.body(x)


def lazy(cfg, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def five_outputs(cfg, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(5))


def a_tuple(cfg, input_shape, num_classes):
    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :num_classes], x
    return Pair()


def breaks(cfg, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3, num_classes))


def not_a_model(cfg, input_shape, num_classes):
    return object()


def looks_like_keras(cfg, input_shape, num_classes):
    class Sequential:
        pass
    Sequential.__module__ = "keras.src.models.sequential"
    return Sequential()


def one_argument(cfg):
    return None


CONSTANT = 3
'''


@pytest.fixture
def builders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of builders on sys.path, under a name no other test imports; returns that name."""
    name = f"user_builders_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def build(module: str, function: str, **fields) -> torch.nn.Module:
    return build_model(ModelConfig(name=f"{module}:{function}", **fields), (8, 8, 1), 10)


def refused(module: str, function: str) -> str:
    with pytest.raises(ConfigError) as info:
        build(module, function)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_functions_and_classes_build_and_get_the_model_section(builders: str) -> None:
    model = build(builders, "good", dropout=0.25)
    assert sum(p.numel() for p in model.parameters()) == 64 * 16 + 16 + 16 * 10 + 10
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]
    assert model.training  # the probe ran in eval mode and put the mode back
    assert isinstance(build(builders, "Net"), torch.nn.Module)


def test_lazy_layers_are_materialised_before_training(builders: str) -> None:
    model = build(builders, "lazy")
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10  # no UninitializedParameter left
    net = build(builders, "Net")
    assert sum(p.numel() for p in net.parameters()) == (9 * 4 + 4) + (4 * 6 * 6 * 10 + 10)


def test_broken_contracts_are_one_line_errors(builders: str) -> None:
    assert "outputs shape [2, 5] for a batch of shape [2, 1, 8, 8], expected [2, 10]" in \
        refused(builders, "five_outputs")
    assert "returned a tuple" in refused(builders, "a_tuple")
    message = refused(builders, "not_a_model")
    assert "returned a object (builtins)" in message and "return a torch.nn.Module" in message
    assert "backend=tensorflow" not in message
    assert refused(builders, "looks_like_keras").endswith("return a torch.nn.Module, or set backend=tensorflow")
    assert "does not take (model_cfg, input_shape, num_classes)" in refused(builders, "one_argument")
    assert "names a int object, not a function" in refused(builders, "CONSTANT")
    assert "has no attribute 'missing'" in refused(builders, "missing")
    assert "No module named 'no_such_module_here'" in refused("no_such_module_here", "build")


def test_an_error_inside_the_model_keeps_its_traceback_and_says_what_ran(builders: str) -> None:
    with pytest.raises(RuntimeError, match="cannot be multiplied") as info:
        build(builders, "breaks")
    if sys.version_info >= (3, 11):
        assert "on a zero batch of shape [2, 1, 8, 8] (NCHW, float32)" in info.value.__notes__[0]


@pytest.mark.parametrize("name", ["pkg.mod:", ":build", "pkg:mod:build", "pkg..mod:build", "pkg.mod:build()",
                                  "my-pkg:build"])
def test_malformed_import_paths_are_refused_with_the_config(name: str) -> None:
    with pytest.raises(ConfigError, match="is not an import path 'package.module:function'"):
        ModelConfig(name=name)  # (on the command line, YAML reads a trailing colon as a mapping)
    with pytest.raises(ConfigError, match="is not an import path"):
        load_user_model(name)


@pytest.mark.parametrize("override,words", [
    ("model.name=resnets", "neither a built-in model"), ("model.depth=21", r"is not 6n \+ 2"),
    ("model.depth=2", "below the minimum 8"), ("model.width_multiplier=0", "must be above 0"),
])
def test_model_section_validation(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(None, [override])
    assert load_config(None, ["model.name=my_pkg.models:build"]).model.name == "my_pkg.models:build"


KERAS_CHECKS = '''
import json, sys
from hvdtrain.config import ModelConfig
from hvdtrain.errors import ConfigError
from tf_backend.models import build_model

out = {}
for function in ("unbuilt", "wrong_head", "looks_like_torch"):
    try:
        model = build_model(ModelConfig(name="keras_builders:" + function), (8, 8, 1), 10)
        out[function] = sum(int(v.numpy().size) for v in model.trainable_variables)
    except ConfigError as exc:
        out[function] = str(exc)
print(json.dumps(out))
'''

KERAS_BUILDERS = '''
import keras


def unbuilt(cfg, input_shape, num_classes):  # no keras.Input: no variables until called
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(num_classes)])


def wrong_head(cfg, input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(3)])


def looks_like_torch(cfg, input_shape, num_classes):
    class Sequential:
        pass
    Sequential.__module__ = "torch.nn.modules.container"
    return Sequential()
'''


def test_keras_user_models(tmp_path: Path) -> None:
    (tmp_path / "keras_builders.py").write_text(KERAS_BUILDERS)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KERAS_CHECKS)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["unbuilt"] == 64 * 16 + 16 + 16 * 10 + 10  # built by the probe, so it has weights to train
    assert "outputs shape [2, 3] for a batch of shape [2, 8, 8, 1], expected [2, 10]" in out["wrong_head"]
    assert out["looks_like_torch"].endswith("return a Keras 3 model (keras.Model), or set backend=torch")
