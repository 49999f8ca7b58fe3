"""Export for torch runs (hvdtrain/lifecycle/export.py): the model behind its standardisation, as ONNX
(torch.onnx's dynamo exporter) or as torch.export's archive (.pt2), and those archives run back for the check.

The exported module takes NHWC float32 images in [0, 1] with a dynamic batch dimension, standardises them as
the trainer's validation does, permutes them to NCHW and returns the model's logits, in eval mode, on the CPU.
A language model's takes int64 token ids (batch, positions), both dynamic (positions up to its block_size), and
returns (batch, positions, vocabulary) logits.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from hvdtrain.augment.standardize import Standardization
from hvdtrain.backend import Backend
from torch_backend.augment import standardize_tensor
from torch_backend.backend import TorchBackend

EXAMPLE_BATCH = 2  # the batch size traced; the exported batch dimension is dynamic


class StandardizedModel(torch.nn.Module):
    """NHWC float32 images in [0, 1] -> logits: the run's standardisation (torch_backend/augment.py's
    standardize_tensor), NHWC -> NCHW, the model; feature vectors (n, F) go to the model as they are (a run on
    them has no standardisation)."""

    def __init__(self, model: torch.nn.Module, standardization: Standardization) -> None:
        super().__init__()
        self.model, self.standardization = model, standardization

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            images = standardize_tensor(images, self.standardization).permute(0, 3, 1, 2)
        logits: torch.Tensor = self.model(images)
        return logits.float()


def exact_math() -> None:
    """No TF32 in GPU convolutions and matmuls: the trained model's reference logits in full float32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def standardized_model(backend: Backend, standardization: Standardization) -> StandardizedModel:
    """A CPU float32 copy of the backend's model (contiguous NCHW weights), behind the standardisation."""
    assert isinstance(backend, TorchBackend), backend
    model = copy.deepcopy(backend.framework_model()).to(device="cpu", dtype=torch.float32)
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # missing in torch's stub
    wrapped = StandardizedModel(model, standardization).eval()
    wrapped.requires_grad_(False)
    return wrapped


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines, warnings and log records kept off the command's output."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def write(backend: Backend, fmt: str, standardization: Standardization, path: Path) -> None:
    """Writes the standardised model as `fmt` ("onnx" or "torch-export") to the file `path`."""
    assert isinstance(backend, TorchBackend) and backend.spec is not None, "build() first"
    model = standardized_model(backend, standardization)
    if backend.spec.task.sequences:  # token ids (batch, positions) in, up to the model's block_size positions
        block = backend.spec.image_shape[0]
        example = torch.randint(0, backend.spec.num_classes, (EXAMPLE_BATCH, block))
        dynamic = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("positions", min=2, max=block)},)
    else:
        example = torch.rand(EXAMPLE_BATCH, *backend.spec.image_shape)
        dynamic = ({0: torch.export.Dim("batch")},)
    input_name = "tokens" if backend.spec.task.sequences else "images"
    with _quiet(), torch.no_grad():
        if fmt == "torch-export":
            torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic), path)
        elif fmt == "onnx":
            torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=["logits"],
                              dynamic_shapes=dynamic, dynamo=True, external_data=False)
        else:
            raise ValueError(f"torch runs do not export to {fmt}")


def run_artifact(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """The logits of a torch.export archive (.pt2) for NHWC float32 `images`, on the CPU."""
    assert fmt == "torch-export", fmt
    module = torch.export.load(path).module()
    with torch.no_grad():
        inputs = np.ascontiguousarray(images, None if images.dtype.kind == "i" else np.float32)  # tokens, images
        out: np.ndarray = module(torch.from_numpy(inputs)).numpy()
    return out
