"""augment.device=gpu: the training step applies the random transforms and the standardisation where the batch
is, with the framework's ops. On a machine without a GPU the same code runs on the CPU tensors, which is what
this checks (tests/gpu/ runs it on a GPU): the loader path's pixels to 1e-5 (float32 rounding of the
interpolation and of the statistics) and, one step later, the same weights to 1e-5."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from hvdtrain.backend import Placement
from hvdtrain.config import load_config
from hvdtrain.errors import ConfigError
from hvdtrain.training.setup import augment_on_device

TOL = 1e-5


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_in_step_augmentation_gives_the_loader_pixels_and_weights(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "device_augment.py"), backend, str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["raw_dtype"] == "uint8"  # the loader handed the step 8-bit pixels (uint8 until the model)
    assert report["pixels_changed"] > 0.1  # the transforms did something
    assert report["pixels_max_diff"] <= TOL
    assert report["weights_max_diff"] <= TOL


def test_where_the_transforms_run() -> None:
    cpu, gpu = Placement("cpu", 2), Placement("cuda:0", 2)
    rotate = ["augment.rotation_range=10"]
    assert augment_on_device(load_config(None, rotate).augment, gpu)  # auto: on the GPU when training there
    assert not augment_on_device(load_config(None, rotate).augment, cpu)
    assert not augment_on_device(load_config(None, [*rotate, "augment.device=cpu"]).augment, gpu)
    assert not augment_on_device(load_config(None, ["augment.rescale=0.5"]).augment, gpu)  # nothing random
    with pytest.raises(ConfigError, match="augment.device=gpu, but this rank trains on the CPU"):
        augment_on_device(load_config(None, [*rotate, "augment.device=gpu"]).augment, cpu)
