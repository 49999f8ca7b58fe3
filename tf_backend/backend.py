"""The TensorFlow/Keras 3 backend: a compiled tf.function step with Horovod's tensor collectives.

Horovod's Keras integration (horovod.tensorflow.keras) and its TF helpers (broadcast_variables,
DistributedGradientTape) fail on Keras 3, so this backend calls the collectives directly: one
grouped_allreduce of all gradients per step, per-variable broadcasts from rank 0 at start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up banner out of the logs

import horovod.tensorflow as hvd  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hvdtrain.backend import StepStats, World  # noqa: E402
from hvdtrain.config import Config  # noqa: E402
from hvdtrain.distributed.environment import threads_for_rank  # noqa: E402
from hvdtrain.errors import ConfigError  # noqa: E402
from hvdtrain.features.finetune import frozen, lr_multipliers, teacher_model_config  # noqa: E402
from hvdtrain.features.pruning import Kernel  # noqa: E402
from tf_backend.losses import cross_entropy, distillation_loss  # noqa: E402
from tf_backend.models import build_model  # noqa: E402
from tf_backend.optimizers import TorchAdam, TorchSGD  # noqa: E402


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """The optimizer named by `optim.name` with PyTorch's update rules (tf_backend/optimizers.py), global-norm
    clipping from `policy.grad_clip_norm`, and for fp16 Keras' dynamic loss scaling around it."""
    optim, policy = cfg.optim, cfg.policy
    common = {"learning_rate": optim.lr, "global_clipnorm": policy.grad_clip_norm}
    if optim.name == "sgd":
        inner: keras.optimizers.Optimizer = TorchSGD(momentum=optim.momentum, nesterov=optim.nesterov,
                                                     l2=optim.weight_decay, **common)
    else:
        inner = TorchAdam(beta_1=optim.beta1, beta_2=optim.beta2, epsilon=optim.eps, decay=optim.weight_decay,
                          decoupled=optim.name == "adamw", **common)
    if policy.precision != "fp16":
        return inner
    # Unscales, checks every gradient for inf/NaN, skips the step and halves the scale if any, and
    # clips (the inner optimizer's global_clipnorm) only after unscaling.
    return keras.optimizers.LossScaleOptimizer(inner, initial_scale=policy.loss_scale_init,
                                               dynamic_growth_steps=policy.loss_scale_growth_interval)


WEIGHTS_FILE, OPTIMIZER_FILE = "model.weights.h5", "optimizer.npz"
_DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


class TensorFlowBackend:
    """Backend for TensorFlow 2 with Keras 3 models (see hvdtrain.backend.Backend)."""

    name = "tensorflow"
    hvd = hvd

    def __init__(self) -> None:
        self.model: keras.Model | None = None
        self.teacher: keras.Model | None = None
        self.optimizer: keras.optimizers.Optimizer | None = None
        self._lr: float | None = None
        self._accumulate_fn: Any = None
        self._step_fn: Any = None
        self._eval_fn: Any = None
        self._built_for: tuple[Config, tuple[int, int, int]] | None = None
        self._trainable: list[Any] = []
        self._masks: list[tuple[Any, tf.Tensor]] = []
        self.threads, self.device = 1, "cpu"
        self.last_comm_seconds = 0.0

    def init(self, threads_per_rank: int) -> World:
        hvd.init()
        self.threads = threads_for_rank(threads_per_rank, hvd.local_size())
        tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, self.threads))
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # Horovod: one visible GPU per local rank, memory taken as needed.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
            self.device = f"gpu:{hvd.local_rank() % len(gpus)}"
        return self.world()

    def world(self) -> World:
        return World.from_horovod(hvd, device=self.device, threads=self.threads)

    def reset(self) -> None:
        hvd.shutdown()
        hvd.init()
        if self._built_for is not None:  # traced steps hold collectives of the old world: trace again
            self._compile(*self._built_for)

    def is_collective_failure(self, exc: BaseException) -> bool:
        # A collective that fails inside a traced step surfaces as a TF error naming the Horovod op.
        return isinstance(exc, tf.errors.OpError) and "Horovod" in str(exc)

    def framework_version(self) -> str:
        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        tensor = tf.constant(np.asarray(values, dtype=np.float64))
        return hvd.allreduce(tensor, op=hvd.Sum, name="hvdtrain.metrics").numpy()

    def allgather_object(self, obj: Any) -> list[Any]:
        # A fixed name: Horovod names the collective after type(obj), and ranks holding different types
        # (None on one, a message on another) would then wait on different collectives forever.
        return hvd.allgather_object(obj, name="hvdtrain.object")

    def build(self, cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> int:
        keras.utils.set_random_seed(cfg.seed)
        # Keras' mixed precision: layers compute in bf16/fp16 and keep fp32 variables.
        keras.mixed_precision.set_dtype_policy(_DTYPE_POLICIES[cfg.policy.precision])
        try:
            model = build_model(cfg.model, image_shape, num_classes)
            if cfg.distill.teacher:  # its weights come in load_teacher (rank 0), then sync_state
                self.teacher = build_model(teacher_model_config(cfg), image_shape, num_classes)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        fixed = frozen((v.path for v in model.trainable_variables), cfg.train.freeze)
        self._trainable = [v for v in model.trainable_variables if v.path not in fixed]
        optimizer = make_optimizer(cfg)
        inner = optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer
        inner.lr_multipliers = lr_multipliers((v.path for v in self._trainable), cfg.optim.param_groups)
        # Create the optimizer's slots now (Keras would create them lazily inside the first step), so
        # that they too start as rank 0's. Frozen variables get none and no gradient.
        optimizer.build(self._trainable)
        self.model, self.optimizer = model, optimizer
        self._built_for = (cfg, image_shape)
        self._compile(cfg, image_shape)
        return int(sum(np.prod(v.shape) for v in model.trainable_variables))

    def _penalty(self) -> tf.Tensor:
        """regularization.l1/l2 over the kernels (trainable variables with ndim > 1)."""
        assert self.model is not None and self._built_for is not None, "build() first"
        reg = self._built_for[0].regularization
        total = tf.constant(0.0)
        for var in self._trainable:
            if len(var.shape) > 1:
                value = tf.cast(var, tf.float32)
                if reg.l1:
                    total += reg.l1 * tf.reduce_sum(tf.abs(value))
                if reg.l2:
                    total += reg.l2 * tf.reduce_sum(tf.square(value))
        return total

    def _kernels(self) -> dict[str, tuple[Any, int]]:
        """Conv and dense kernels by path, with the axis of their output channels (depthwise: the input's)."""
        assert self.model is not None, "build() first"
        out = {}
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and len(kernel.shape) > 1:
                depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
                out[kernel.path] = (kernel, 2 if depthwise else len(kernel.shape) - 1)
        return out

    def prunable(self) -> dict[str, Kernel]:
        return {path: Kernel(np.array(var), axis) for path, (var, axis) in self._kernels().items()}

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        kernels = self._kernels()
        self._masks = [(kernels[name][0], tf.constant(mask, dtype=kernels[name][0].dtype))
                       for name, mask in masks.items()]
        self._apply_masks()

    def _apply_masks(self) -> None:
        for var, mask in self._masks:
            var.assign(var * mask)

    def regularization_penalty(self) -> float:
        return float(self._penalty())

    def _variables(self) -> list[Any]:
        """Everything a step changes: model variables, optimizer slots, iterations and loss scale."""
        assert self.model is not None and self.optimizer is not None, "build() first"
        return self.model.variables + self.optimizer.variables

    @staticmethod
    def _load_weights(model: keras.Model, source: Path, skip_mismatched: bool, key: str) -> list[str]:
        """Weights from a checkpoint directory or a final model.keras into `model`; returns the variables left
        at their fresh initialisation because their shapes differ (only with `skip_mismatched`)."""
        import warnings

        before = [np.array(v) for v in model.variables]
        try:
            with warnings.catch_warnings():  # Keras warns about each skipped layer; we report them ourselves
                warnings.simplefilter("ignore")
                model.load_weights(source / WEIGHTS_FILE if source.is_dir() else source, skip_mismatch=skip_mismatched)
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{key}: '{source}' does not fit this model (layers or shapes differ: {first}): use the "
                              "same model.name, or set train.init_skip_mismatched=true for a different head") from None
        return [v.path for v, old in zip(model.variables, before) if np.array_equal(np.array(v), old)] \
            if skip_mismatched else []

    def init_weights(self, source: Path, skip_mismatched: bool) -> list[str]:
        assert self.model is not None, "build() first"
        return self._load_weights(self.model, source, skip_mismatched, "train.init_from")

    def load_teacher(self, source: Path) -> None:
        assert self.teacher is not None, "build() with distill.teacher first"
        self._load_weights(self.teacher, source, False, "distill.teacher")

    def load_checkpoint(self, directory: Path) -> None:
        from hvdtrain.training.checkpoint import CheckpointError

        assert self.model is not None and self.optimizer is not None, "build() first"
        self.model.load_weights(directory / WEIGHTS_FILE)
        with np.load(directory / OPTIMIZER_FILE) as saved:
            if len(saved.files) != len(self.optimizer.variables):
                raise CheckpointError(f"checkpoint '{directory}' holds {len(saved.files)} optimizer variables, "
                                      f"this optimizer has {len(self.optimizer.variables)}: resume with the "
                                      "config it was written with")
            for i, var in enumerate(self.optimizer.variables):
                var.assign(saved[f"v{i}"])

    def sync_state(self) -> None:
        # Horovod: every rank takes rank 0's variables (and the teacher's), one broadcast each.
        teacher = self.teacher.variables if self.teacher is not None else []
        for i, var in enumerate(self._variables() + teacher):
            var.assign(hvd.broadcast(tf.convert_to_tensor(var), root_rank=0, name=f"hvdtrain.init.{i}"))

    def snapshot(self) -> list[np.ndarray]:
        return [np.array(v) for v in self._variables()]

    def restore_snapshot(self, snapshot: list[np.ndarray]) -> None:
        for var, value in zip(self._variables(), snapshot):
            var.assign(value)

    def save_checkpoint(self, directory: Path) -> list[str]:
        assert self.model is not None and self.optimizer is not None, "build() first"
        self.model.save_weights(directory / WEIGHTS_FILE)
        # Keras' optimizer variables (slots, iterations, loss scale) in build order, which is the same for
        # the same model and optimizer config.
        np.savez(directory / OPTIMIZER_FILE, **{f"v{i}": np.asarray(v) for i, v in enumerate(self.optimizer.variables)})
        return [WEIGHTS_FILE, OPTIMIZER_FILE]

    def _compile(self, cfg: Config, image_shape: tuple[int, int, int]) -> None:
        """Traces the step functions: `accumulate` for the first micro-batches of a window, `step` for its
        last (one grouped allreduce, then the optimizer), `eval`."""
        model, optimizer, policy = self.model, self.optimizer, cfg.policy
        assert model is not None and optimizer is not None
        window = policy.accumulation_steps
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        variables = self._trainable
        sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables] if window > 1 else []
        reduce_op = hvd.Adasum if policy.reduce_op == "adasum" else hvd.Average
        compression = hvd.Compression.fp16 if policy.compression == "fp16" else hvd.Compression.none
        signature = [tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int64)]

        smoothing, distill, teacher = cfg.regularization.label_smoothing, cfg.distill, self.teacher

        def correct_of(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.float64))

        def train_loss(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = tf.cast(model(x, training=True), tf.float32)  # the loss in fp32 in any precision
            if teacher is None:
                loss = tf.reduce_mean(cross_entropy(logits, y, smoothing))
            else:  # the teacher sees the same (augmented) batch, in inference mode, without gradients
                teacher_logits = tf.stop_gradient(tf.cast(teacher(x, training=False), tf.float32))
                loss = distillation_loss(logits, teacher_logits, y, distill.temperature, distill.alpha, smoothing)
            return loss, correct_of(logits, y)

        def local_gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                loss, correct = train_loss(x, y)
                window_loss = (loss + self._penalty()) / window  # the window's mean gradient
                if scaled:
                    window_loss = optimizer.scale_loss(window_loss)
            return loss, correct, tape.gradient(window_loss, variables)

        def reduce_gradients(grads: list[tf.Tensor]) -> list[tf.Tensor]:
            if reduce_op == hvd.Average:
                # Horovod: one grouped collective per optimizer step for every gradient of the window.
                return hvd.grouped_allreduce(grads, op=reduce_op, compression=compression, name="hvdtrain.grads")
            # Horovod 0.28.1's grouped_allreduce fails for Adasum (it reads a comprehension's variable);
            # per-tensor allreduces are fused by Horovod all the same.
            return [hvd.allreduce(g, op=reduce_op, compression=compression, name=f"hvdtrain.grads.{i}")
                    for i, g in enumerate(grads)]

        @tf.function(input_signature=signature, reduce_retracing=True)
        def accumulate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            loss, correct, grads = local_gradients(x, y)
            for total, g in zip(sums, grads):
                total.assign_add(g)
            return loss, correct

        @tf.function(input_signature=signature, reduce_retracing=True)
        def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            loss, correct, grads = local_gradients(x, y)
            if sums:
                grads = [g + total for g, total in zip(grads, sums)]
            # The allreduce's wall time (last_comm_seconds), between timestamps ordered by control
            # dependencies: after every gradient exists, and after every reduced one does.
            with tf.control_dependencies(grads):
                reduce_start = tf.timestamp()
            with tf.control_dependencies([reduce_start]):
                grads = [tf.identity(g) for g in grads]
            grads = reduce_gradients(grads)
            with tf.control_dependencies(grads):
                communication = tf.timestamp() - reduce_start
            # Identical reduced gradients on every rank: a loss-scale overflow skips the step on all alike.
            optimizer.apply(grads, variables)
            for total in sums:
                total.assign(tf.zeros_like(total))
            return loss, correct, communication

        @tf.function(input_signature=signature, reduce_retracing=True)
        def evaluate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = tf.cast(model(x, training=False), tf.float32)
            return tf.reduce_sum(cross_entropy(logits, y)), correct_of(logits, y)

        self._accumulate_fn, self._step_fn, self._eval_fn = accumulate, step, evaluate

    def train_step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> StepStats:
        assert self.optimizer is not None, "build() first"
        if lr != self._lr:
            self.optimizer.learning_rate = lr  # assigns the optimizer's LR variable; no retrace
            self._lr = lr
        loss_sum, correct, count = 0.0, 0.0, 0
        for i, (x, y) in enumerate(batches):
            if i < len(batches) - 1:
                loss, right = self._accumulate_fn(x, y)
            else:
                loss, right, communication = self._step_fn(x, y)
                self.last_comm_seconds = float(communication)
            loss_sum += float(loss) * len(y)
            correct += float(right)
            count += len(y)
        self._apply_masks()  # pruned weights stay exactly zero whatever the optimizer did
        return StepStats(loss_sum, correct, count)

    def current_lr(self) -> float:
        assert self.optimizer is not None, "build() first"
        return float(np.asarray(self.optimizer.learning_rate))

    def loss_scale(self) -> float | None:
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return float(np.asarray(self.optimizer.dynamic_scale))
        return None

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
