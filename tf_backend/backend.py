"""The TensorFlow/Keras 3 backend: a compiled tf.function step with Horovod's tensor collectives.

Horovod's Keras integration (horovod.tensorflow.keras) and its TF helpers (broadcast_variables,
DistributedGradientTape) fail on Keras 3, so this backend calls the collectives directly: one
grouped_allreduce of all gradients per step, per-variable broadcasts from rank 0 at start.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up banner out of the logs

import horovod.tensorflow as hvd  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hvdtrain.backend import StepStats, World  # noqa: E402
from hvdtrain.config import Config, OptimConfig  # noqa: E402
from hvdtrain.environment import threads_for_rank  # noqa: E402
from tf_backend.models import build_model  # noqa: E402


def make_optimizer(cfg: OptimConfig) -> keras.optimizers.Optimizer:
    """Keras optimizers with the meanings of hvdtrain's keys (see docs/backends.md for what differs).

    sgd/adam weight decay is an L2 term added to the gradient by the train step (as in PyTorch), not
    Keras' decoupled `weight_decay`; adamw's decoupled decay is Keras' own, which matches PyTorch's AdamW.
    """
    if cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    kwargs = {"learning_rate": cfg.lr, "beta_1": cfg.beta1, "beta_2": cfg.beta2, "epsilon": cfg.eps}
    if cfg.name == "adam":
        return keras.optimizers.Adam(**kwargs)
    return keras.optimizers.AdamW(weight_decay=cfg.weight_decay, **kwargs)


class TensorFlowBackend:
    """Backend for TensorFlow 2 with Keras 3 models (see hvdtrain.backend.Backend)."""

    name = "tensorflow"

    def __init__(self) -> None:
        self.model: keras.Model | None = None
        self.optimizer: keras.optimizers.Optimizer | None = None
        self._lr: float | None = None
        self._train_fn: Any = None
        self._eval_fn: Any = None

    def init(self, threads_per_rank: int) -> World:
        hvd.init()
        threads = threads_for_rank(threads_per_rank, hvd.local_size())
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        device = "cpu"
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # Horovod: one visible GPU per local rank, memory taken as needed.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
            device = f"gpu:{hvd.local_rank() % len(gpus)}"
        return World.from_horovod(hvd, device=device, threads=threads)

    def framework_version(self) -> str:
        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        tensor = tf.constant(np.asarray(values, dtype=np.float64))
        return hvd.allreduce(tensor, op=hvd.Sum, name="hvdtrain.metrics").numpy()

    def allgather_object(self, obj: Any) -> list[Any]:
        return hvd.allgather_object(obj)

    def build(self, cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> int:
        keras.utils.set_random_seed(cfg.seed)
        model = build_model(cfg.model, image_shape, num_classes)
        optimizer = make_optimizer(cfg.optim)
        # Create the optimizer's slots now (Keras would create them lazily inside the first step), so
        # that they too start as rank 0's.
        optimizer.build(model.trainable_variables)
        self._broadcast_from_root(model.variables + optimizer.variables)
        self.model, self.optimizer = model, optimizer
        coupled_decay = cfg.optim.weight_decay if cfg.optim.name in ("sgd", "adam") else 0.0
        self._train_fn, self._eval_fn = self._compile(image_shape, coupled_decay)
        return int(sum(np.prod(v.shape) for v in model.trainable_variables))

    @staticmethod
    def _broadcast_from_root(variables: list[Any]) -> None:
        for i, var in enumerate(variables):
            var.assign(hvd.broadcast(tf.convert_to_tensor(var), root_rank=0, name=f"hvdtrain.init.{i}"))

    def _compile(self, image_shape: tuple[int, int, int], coupled_decay: float) -> tuple[Any, Any]:
        model, optimizer = self.model, self.optimizer
        assert model is not None and optimizer is not None
        signature = [tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int64)]

        def loss_and_correct(x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
            logits = model(x, training=training)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.float64))
            return losses, correct

        @tf.function(input_signature=signature, reduce_retracing=True)
        def train_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                losses, correct = loss_and_correct(x, y, training=True)
                loss = tf.reduce_mean(losses)
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            # Horovod: average every gradient across ranks in one grouped collective per step.
            grads = hvd.grouped_allreduce(grads, op=hvd.Average, name="hvdtrain.grads")
            if coupled_decay:
                grads = [g + coupled_decay * v for g, v in zip(grads, variables)]
            optimizer.apply_gradients(zip(grads, variables))
            return loss, correct

        @tf.function(input_signature=signature, reduce_retracing=True)
        def eval_step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            losses, correct = loss_and_correct(x, y, training=False)
            return tf.reduce_sum(losses), correct

        return train_step, eval_step

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> StepStats:
        assert self.optimizer is not None, "build() first"
        if lr != self._lr:
            self.optimizer.learning_rate = lr  # assigns the optimizer's LR variable; no retrace
            self._lr = lr
        loss, correct = self._train_fn(x, y)
        return StepStats(float(loss) * len(y), float(correct), len(y))

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepStats:
        loss_sum, correct = self._eval_fn(x, y)
        return StepStats(float(loss_sum), float(correct), len(y))

    def weights(self) -> dict[str, np.ndarray]:
        assert self.model is not None, "build() first"
        return {v.path: np.asarray(v) for v in self.model.variables}

    def save_model(self, directory: Path) -> Path:
        assert self.model is not None, "build() first"
        path = directory / "model.keras"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".keras")
        os.close(fd)
        try:
            self.model.save(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def shutdown(self) -> None:
        hvd.shutdown()
