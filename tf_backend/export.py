"""Export for TensorFlow runs (hvdtrain/lifecycle/export.py): the model behind its standardisation as one
tf.function, written as a SavedModel or converted to ONNX, and SavedModels run back for the check.

The function takes NHWC float32 images in [0, 1] (input `images`, dynamic batch dimension), standardises them
as the trainer's validation does and returns {"logits": ...} from the model in inference mode.

ONNX: tf2onnx 1.17's `from_keras` cannot convert Keras 3 models reliably (on a Sequential model it fails
looking up its output names, KeyError 'keras_tensor_N'), so the same tf.function is converted with
`tf2onnx.convert.from_function` instead, which traces it with its TensorSpec signature.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hvdtrain.augment.standardize import Standardization  # noqa: E402
from hvdtrain.backend import Backend  # noqa: E402
from tf_backend.augment import standardize_tensor  # noqa: E402
from tf_backend.backend import TensorFlowBackend  # noqa: E402

ONNX_OPSET = 17
SERVING = "serving_default"


def exact_math() -> None:
    """No TF32 on GPUs: the trained model's reference logits in full float32."""
    tf.config.experimental.enable_tensor_float_32_execution(False)


def serving_function(model: keras.Model, standardization: Standardization,
                     image_shape: tuple[int, ...], tokens: bool = False) -> Any:
    """A tf.function: `images` (NHWC float32 in [0, 1], any batch size) -> {"logits": float32}, the
    standardisation in Keras' order (hvdtrain/augment/standardize.py) before the model; a language model's
    (`tokens`): `tokens` (int64 ids, any batch and up to block_size positions) -> {"logits": float32}."""
    if tokens:
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="tokens")])
        def serve_tokens(ids: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": tf.cast(model(ids, training=False), tf.float32)}

        return serve_tokens

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32, name="images")])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = standardize_tensor(images, standardization) if len(image_shape) == 3 else images
        return {"logits": tf.cast(model(x, training=False), tf.float32)}

    return serve


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """tf2onnx's INFO lines kept off the command's output."""
    log = logging.getLogger("tf2onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def write(backend: Backend, fmt: str, standardization: Standardization, path: Path) -> None:
    """Writes the standardised model as `fmt`: "savedmodel" (the directory `path`) or "onnx" (the file)."""
    assert isinstance(backend, TensorFlowBackend) and backend.spec is not None, "build() first"
    model = backend.framework_model()
    serve = serving_function(model, standardization, backend.spec.image_shape, backend.spec.task.sequences)
    if fmt == "savedmodel":
        module = tf.Module()
        module.model = model  # tracks the model's variables (weights and BatchNorm statistics)
        module.serve = serve
        tf.saved_model.save(module, str(path), signatures={SERVING: serve})
    elif fmt == "onnx":
        import tf2onnx  # type: ignore[import-untyped]  # no stubs

        with _quiet():
            tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=ONNX_OPSET,
                                          output_path=str(path))
    else:
        raise ValueError(f"TensorFlow runs do not export to {fmt}")


def run_artifact(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """The logits of a SavedModel directory's serving signature for NHWC float32 `images`."""
    assert fmt == "savedmodel", fmt
    loaded = tf.saved_model.load(str(path))
    if images.dtype.kind == "i":  # a language model's token ids
        out = loaded.signatures[SERVING](tokens=tf.constant(images, tf.int64))["logits"]
    else:
        out = loaded.signatures[SERVING](images=tf.constant(images, tf.float32))["logits"]
    return np.asarray(out)
