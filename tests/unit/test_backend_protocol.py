"""The boundary between the loop and the frameworks stays narrow: both backends implement the protocol
themselves, the protocol stays about a dozen methods, backends never import the loop, and no
framework-neutral module imports a Horovod framework module (only the communicator is given one)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO

from hvdtrain.backend import Backend, Inference, Penalized, Prunable

MAX_PROTOCOL_METHODS = 13

CONFORMANCE = """
import inspect, json, sys
from hvdtrain.backend import Backend, Inference, Penalized, Prunable
from hvdtrain.distributed.communicator import Communicator
module, cls_name = sys.argv[1].split(":")
cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
backend = cls()
protocols = {"Backend": Backend, "Prunable": Prunable, "Penalized": Penalized, "Inference": Inference}
report = {
    "isinstance": {name: isinstance(backend, proto) for name, proto in protocols.items()},
    # every protocol method is the class's own, not the protocol's empty body
    "not_overridden": [m for name, proto in protocols.items() for m, v in vars(proto).items()
                       if callable(v) and not m.startswith("_") and getattr(cls, m) is v],
    "signatures_differ": [m for m, v in vars(Backend).items() if callable(v) and not m.startswith("_")
                          and list(inspect.signature(getattr(cls, m)).parameters)
                          != list(inspect.signature(v).parameters)],
    "comm": isinstance(backend.comm, Communicator),
    "loop_modules": sorted(m for m in sys.modules
                           if m.startswith(("hvdtrain.training", "hvdtrain.reporting", "hvdtrain.commands"))),
}
print("REPORT", json.dumps(report))
"""


def protocol_methods(proto: type) -> list[str]:
    return [m for m, v in vars(proto).items() if callable(v) and not m.startswith("_")]


def test_protocol_is_about_a_dozen_methods() -> None:
    methods = protocol_methods(Backend)
    assert 10 <= len(methods) <= MAX_PROTOCOL_METHODS, methods
    assert protocol_methods(Prunable) == ["prunable", "set_masks"]
    assert protocol_methods(Penalized) == ["regularization_penalty"]
    assert protocol_methods(Inference) == ["predict"]


@pytest.mark.parametrize("target", ["torch_backend.backend:TorchBackend", "tf_backend.backend:TensorFlowBackend"])
def test_backend_conforms_and_does_not_import_the_loop(target: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CONFORMANCE, target], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT", 1)[1])
    assert report["isinstance"] == {"Backend": True, "Prunable": True, "Penalized": True, "Inference": True}
    assert report["not_overridden"] == []
    assert report["signatures_differ"] == []
    assert report["comm"] is True
    assert report["loop_modules"] == []


def _imports(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_framework_neutral_module_imports_a_horovod_framework_module() -> None:
    offenders = {}
    for path in sorted((REPO / "hvdtrain").rglob("*.py")):
        relative = str(path.relative_to(REPO))
        bad = sorted(n for n in _imports(relative) if n.startswith(("horovod.torch", "horovod.tensorflow", "torch",
                                                                     "tensorflow", "keras")))
        if bad:
            offenders[relative] = bad
    assert offenders == {}
