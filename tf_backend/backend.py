"""The TensorFlow/Keras 3 backend: a compiled tf.function step with Horovod's tensor collectives.

Horovod's Keras integration (horovod.tensorflow.keras) and its TF helpers (broadcast_variables,
DistributedGradientTape) fail on Keras 3, so this backend calls the collectives directly: one
grouped_allreduce of all gradients per step, per-variable broadcasts from rank 0 at start.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up banner out of the logs

import horovod.tensorflow as hvd  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from hvdtrain.backend import (  # noqa: E402
    Backend,
    Batch,
    BuildSpec,
    LoadKind,
    Penalized,
    Placement,
    Prunable,
    PrunableWeight,
    SaveKind,
    StepInfo,
    StepResult,
)
from hvdtrain.compile_meter import CompileMeter  # noqa: E402
from hvdtrain.config import OptimConfig  # noqa: E402
from hvdtrain.distributed.communicator import Communicator  # noqa: E402
from hvdtrain.distributed.environment import gpu_for_rank, no_gpu_support_error, threads_for_rank  # noqa: E402
from hvdtrain.errors import CheckpointError, ConfigError  # noqa: E402
from hvdtrain.features.finetune import decays, frozen, lr_multipliers  # noqa: E402
from tf_backend.augment import augment_on_device  # noqa: E402
from tf_backend.batchnorm import sync_statistics, with_sync_batchnorm  # noqa: E402
from tf_backend.losses import (  # noqa: E402
    cross_entropy,
    distillation_loss,
    per_sample_loss,
    token_losses,
    window_summary,
)
from tf_backend.models import CREATION_INDEX, build_model  # noqa: E402
from tf_backend.optimizers import TorchAdam, TorchSGD  # noqa: E402
from tf_backend.precision import Precision, make_precision  # noqa: E402


def make_optimizer(optim: OptimConfig, clip_norm: float | None = None) -> keras.optimizers.Optimizer:
    """The optimizer named by `optim.name` with PyTorch's update rules (tf_backend/optimizers.py) and global-norm
    clipping at `clip_norm` (policy.grad_clip_norm). fp16's loss scaling wraps it (tf_backend/precision.py)."""
    if optim.name == "sgd":
        return TorchSGD(momentum=optim.momentum, nesterov=optim.nesterov, l2=optim.weight_decay,
                        learning_rate=optim.lr, global_clipnorm=clip_norm)
    return TorchAdam(beta_1=optim.beta1, beta_2=optim.beta2, epsilon=optim.eps, decay=optim.weight_decay,
                     decoupled=optim.name == "adamw", learning_rate=optim.lr, global_clipnorm=clip_norm)


def per_variable_rules(optimizer: keras.optimizers.Optimizer, variables: list[Any], optim: OptimConfig) -> None:
    """optim.param_groups' LR multipliers and optim.weight_decay_on's exemptions, by variable path: set before
    the optimizer's `build`."""
    optimizer.lr_multipliers = lr_multipliers((v.path for v in variables), optim.param_groups)
    optimizer.no_decay = {v.path for v in variables if not decays(tuple(v.shape), optim.weight_decay_on)}


WEIGHTS_FILE, OPTIMIZER_FILE, MODEL_FILE = "model.weights.h5", "optimizer.npz", "model.keras"


class TensorFlowBackend(Backend, Prunable, Penalized):
    """Backend for TensorFlow 2 with Keras 3 models (the protocol: hvdtrain.backend.Backend, Prunable, Penalized)."""

    name = "tensorflow"

    def __init__(self) -> None:
        # A collective that fails inside a traced step surfaces as a TF error naming the Horovod op.
        self.comm = Communicator(hvd, as_tensor=tf.constant, failure_types=(tf.errors.OpError,))
        self.spec: BuildSpec | None = None
        self.model: keras.Model | None = None
        self.teacher: keras.Model | None = None
        self.optimizer: keras.optimizers.Optimizer | None = None
        self.precision: Precision | None = None
        self._lr: float | None = None
        self._accumulate_fn: Any = None
        self._step_fn: Any = None
        self._eval_fn: Any = None
        self._predict_fn: Any = None
        self._trainable: list[Any] = []
        self._masks: list[tuple[Any, tf.Tensor]] = []
        self.threads, self.device = 1, "cpu"
        self._comm_seconds = 0.0
        self._decode_fns: tuple[Any, Any] | None = None  # generation (next_token_logits), traced on first use
        self._meter: CompileMeter | None = None  # train.compile: XLA's compiling, counted and timed
        self._xla_fns: list[Any] = []  # the XLA-compiled functions whose traces the meter counts
        self._xla_failed = False  # XLA refused the model: plain tf.functions from then on

    def setup(self, threads_per_rank: int) -> Placement:
        world = self.comm.init()
        self.threads = threads_for_rank(threads_per_rank, world.local_size)
        tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, self.threads))
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:  # Horovod: one visible GPU per local rank, memory taken as needed.
            if not hvd.cuda_built():
                raise no_gpu_support_error("tensorflow")
            index = gpu_for_rank(world.local_rank, world.local_size, len(gpus))
            tf.config.experimental.set_memory_growth(gpus[index], True)
            tf.config.set_visible_devices(gpus[index], "GPU")
            self.device = f"gpu:{index}"
        return Placement(device=self.device, threads=self.threads)

    def framework_version(self) -> str:
        return f"tensorflow {tf.__version__}, keras {keras.__version__}"

    def reset(self) -> None:
        if self.spec is not None:  # traced steps hold collectives of the old world: trace again
            self._compile()

    def build(self, spec: BuildSpec) -> int:
        keras.utils.set_random_seed(spec.seed)
        self.spec = spec
        self.precision = precision = make_precision(spec.step)
        with precision.build_context():
            model = build_model(spec.model, spec.image_shape, spec.num_classes, tokens=spec.task.sequences,
                                seed=spec.seed)
            if spec.model.sync_batchnorm:
                model = with_sync_batchnorm(model, keep=CREATION_INDEX)
            if spec.teacher is not None:  # its weights come from load(..., "teacher") on rank 0, then sync
                self.teacher = build_model(spec.teacher, spec.image_shape, spec.num_classes)
        fixed = frozen((v.path for v in model.trainable_variables), spec.freeze)
        self._trainable = [v for v in model.trainable_variables if v.path not in fixed]
        inner = make_optimizer(spec.optim, spec.step.grad_clip_norm)
        per_variable_rules(inner, self._trainable, spec.optim)
        optimizer = precision.wrap(inner)
        # Create the optimizer's slots now (Keras would create them lazily inside the first step), so
        # that they too start as rank 0's. Frozen variables get none and no gradient.
        optimizer.build(self._trainable)
        self.model, self.optimizer = model, optimizer
        if spec.compile:
            self._meter = CompileMeter(lambda: sum(int(f.experimental_get_tracing_count()) for f in self._xla_fns))
            if spec.model.sync_batchnorm:
                self._meter.note("train.compile: model.sync_batchnorm allreduces inside the forward pass, and "
                                 "Horovod's ops cannot run inside XLA: the steps run as plain tf.functions")
        self._compile()
        return int(sum(np.prod(v.shape) for v in model.trainable_variables))

    def _parts(self) -> tuple[BuildSpec, keras.Model, keras.optimizers.Optimizer, Precision]:
        spec, model, optimizer, precision = self.spec, self.model, self.optimizer, self.precision
        assert spec is not None and model is not None and optimizer is not None and precision is not None, \
            "build() first"
        return spec, model, optimizer, precision

    def framework_model(self) -> keras.Model:
        """The built model itself, on its device (export writes it in TensorFlow's and ONNX's formats)."""
        return self._parts()[1]

    # --- state -------------------------------------------------------------------------------------------
    def _variables(self) -> list[Any]:
        """Everything a step changes: model variables, optimizer slots, iterations and loss scale."""
        _, model, optimizer, _ = self._parts()
        return list(model.variables) + list(optimizer.variables)

    def state(self) -> list[np.ndarray]:
        return [np.array(v) for v in self._variables()]

    def load_state(self, state: list[np.ndarray]) -> None:
        for var, value in zip(self._variables(), state, strict=True):
            var.assign(value)
        self._lr = None  # the optimizer's LR variable came back with the state: the next step sets it again

    def sync(self) -> None:
        # Horovod: every rank takes rank 0's variables (and the teacher's), one broadcast each.
        teacher = list(self.teacher.variables) if self.teacher is not None else []
        for i, var in enumerate(self._variables() + teacher):
            var.assign(hvd.broadcast(tf.convert_to_tensor(var), root_rank=0, name=f"hvdtrain.init.{i}"))
        self._lr = None  # rank 0's LR variable arrived with the rest

    def save(self, directory: Path, kind: SaveKind) -> list[str]:
        _, model, optimizer, _ = self._parts()
        if kind == "model":
            path = directory / MODEL_FILE
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".keras")
            os.close(fd)
            try:
                model.save(tmp)
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            return [MODEL_FILE]
        model.save_weights(directory / WEIGHTS_FILE)
        # Keras' optimizer variables (slots, iterations, loss scale) in build order, which is the same for
        # the same model and optimizer config.
        slots = {f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
        # numpy's stub types **kwds as if a key could be its allow_pickle flag (these are v0, v1, ...).
        np.savez(directory / OPTIMIZER_FILE, **slots)  # type: ignore[arg-type]
        return [WEIGHTS_FILE, OPTIMIZER_FILE]

    def load(self, source: Path, kind: LoadKind, skip_mismatched: bool = False) -> list[str]:
        _, model, optimizer, _ = self._parts()
        if kind == "init":
            return self._load_weights(model, source, skip_mismatched, "train.init_from")
        if kind == "teacher":
            assert self.teacher is not None, "build() with a teacher first"
            return self._load_weights(self.teacher, source, False, "distill.teacher")
        model.load_weights(source / WEIGHTS_FILE)
        with np.load(source / OPTIMIZER_FILE) as saved:
            if len(saved.files) != len(optimizer.variables):
                raise CheckpointError(f"checkpoint '{source}' holds {len(saved.files)} optimizer variables, "
                                      f"this optimizer has {len(optimizer.variables)}: resume with the "
                                      "config it was written with")
            for i, var in enumerate(optimizer.variables):
                var.assign(saved[f"v{i}"])
        self._lr = None
        return []

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
        return [v.path for v, old in zip(model.variables, before, strict=True) if np.array_equal(np.array(v), old)] \
            if skip_mismatched else []

    def weights(self) -> dict[str, np.ndarray]:
        _, model, _, _ = self._parts()
        return {v.path: np.asarray(v) for v in model.variables}

    # --- steps -------------------------------------------------------------------------------------------
    def _penalty(self) -> tf.Tensor:
        """regularization.l1/l2 over the kernels (trainable variables with ndim > 1)."""
        reg = self._parts()[0].regularization
        total = tf.constant(0.0)
        for var in self._trainable:
            if len(var.shape) > 1:
                value = tf.cast(var, tf.float32)
                if reg.l1:
                    total += reg.l1 * tf.reduce_sum(tf.abs(value))
                if reg.l2:
                    total += reg.l2 * tf.reduce_sum(tf.square(value))
        return total

    def _compile(self) -> None:
        """Traces the step functions: `accumulate` for the first micro-batches of a window, `step` for its
        last (one grouped allreduce, then the optimizer), `eval`."""
        spec, model, optimizer, precision = self._parts()
        policy, teacher = spec.step, self.teacher
        window = policy.accumulation_steps
        variables = self._trainable
        sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables] if window > 1 else []
        reduce_op = hvd.Adasum if policy.reduce_op == "adasum" else hvd.Average
        compression = hvd.Compression.fp16 if policy.compression == "fp16" else hvd.Compression.none
        sequences = spec.task.sequences
        if sequences:  # token windows in, the next tokens as targets
            signature = [tf.TensorSpec([None, None], tf.int64), tf.TensorSpec([None, None], tf.int64)]  # any length
        else:
            targets = (tf.TensorSpec([None], tf.int64) if spec.task.int_targets else
                       tf.TensorSpec([None, spec.num_classes], tf.float32))
            signature = [tf.TensorSpec([None, *spec.image_shape], tf.float32), targets]
        smoothing, distill = spec.regularization.label_smoothing, spec.distill
        per_sample, fused_cross_entropy = per_sample_loss(spec.task.loss), spec.task.loss == "cross_entropy"

        def train_loss(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = tf.cast(model(x, training=True), tf.float32)  # the loss in fp32 in any precision
            if teacher is not None:  # the teacher sees the same (augmented) batch, in inference mode, without gradients
                teacher_logits = tf.stop_gradient(tf.cast(teacher(x, training=False), tf.float32))
                loss = distillation_loss(logits, teacher_logits, y, distill.temperature, distill.alpha, smoothing)
            elif sequences:  # every window has t positions: the token mean is the window mean
                losses = token_losses(logits, y, smoothing) if fused_cross_entropy else per_sample(logits, y)
                return tf.reduce_mean(losses), window_summary(logits, y, None if smoothing else losses)
            elif fused_cross_entropy:
                loss = tf.reduce_mean(cross_entropy(logits, y, smoothing))
            else:
                loss = tf.reduce_mean(per_sample(logits, y))
            return loss, logits

        def local_gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                loss, logits = train_loss(x, y)
                window_loss = precision.scale_loss(optimizer, (loss + self._penalty()) / window)  # window mean
            # Embedding lookups give sparse gradients (IndexedSlices); Horovod's grouped allreduce takes dense ones.
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in tape.gradient(window_loss, variables)]
            return loss, logits, grads

        def reduce_gradients(grads: list[tf.Tensor]) -> list[tf.Tensor]:
            if not policy.allreduce:  # one rank: nothing to average (StepPolicy.allreduce)
                return grads
            if reduce_op == hvd.Average:
                # Horovod: one grouped collective per optimizer step for every gradient of the window.
                reduced: list[tf.Tensor] = hvd.grouped_allreduce(grads, op=reduce_op, compression=compression,
                                                                  name="hvdtrain.grads")
                return reduced
            # Horovod 0.28.1's grouped_allreduce fails for Adasum (it reads a comprehension's variable);
            # per-tensor allreduces are fused by Horovod all the same.
            return [hvd.allreduce(g, op=reduce_op, compression=compression, name=f"hvdtrain.grads.{i}")
                    for i, g in enumerate(grads)]

        def accumulate_local(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            loss, logits, grads = local_gradients(x, y)
            for total, g in zip(sums, grads, strict=True):
                total.assign_add(g)
            return loss, logits

        def window_gradients(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
            loss, logits, grads = local_gradients(x, y)
            if sums:
                grads = [g + total for g, total in zip(grads, sums, strict=True)]
            return loss, logits, grads

        def reduce_and_apply(grads: list[tf.Tensor]) -> tf.Tensor:
            # The allreduce's wall time (StepInfo.comm_seconds), between timestamps ordered by control
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
            return communication

        def evaluate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            logits = tf.cast(model(x, training=False), tf.float32)
            if sequences:
                summary = window_summary(logits, y)
                loss_sum = tf.reduce_sum(tf.cast(summary[:, 0], tf.float64) if fused_cross_entropy else
                                         per_sample(logits, y))
                return loss_sum, summary
            return tf.reduce_sum(cross_entropy(logits, y) if fused_cross_entropy else per_sample(logits, y)), logits

        @tf.function(input_signature=signature[:1], reduce_retracing=True, autograph=False)
        def predict(x: tf.Tensor) -> tf.Tensor:
            return tf.cast(model(x, training=False), tf.float32)

        # No AutoGraph, as Keras 3's fit traces its steps: converting Horovod's Python, the model, the losses and
        # the optimizer while tracing cost about 1.8 s of every process's start (measured) and changes nothing in
        # code without tensor-dependent Python control flow (docs/tasks.md asks the same of a user's loss).
        plain = tf.function(input_signature=signature, reduce_retracing=True, autograph=False)
        if self._meter is not None and not spec.model.sync_batchnorm and not self._xla_failed:
            # train.compile: the forward and backward passes (and the evaluation) in XLA, traced per input shape
            # (no signature: each shape is one trace and one XLA compilation, which the meter counts); Horovod's
            # allreduce and the optimizer outside, in a plain tf.function.
            xla = tf.function(jit_compile=True, autograph=False)
            self._xla_fns = [xla(accumulate_local), xla(window_gradients), xla(evaluate)]
            accumulate, gradients, self._eval_fn = self._xla_fns
            apply = tf.function(reduce_and_apply, autograph=False)

            def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                loss, logits, grads = gradients(x, y)
                return loss, logits, apply(grads)
        else:
            self._xla_fns = []
            accumulate, self._eval_fn = plain(accumulate_local), plain(evaluate)

            @plain
            def step(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                loss, logits, grads = window_gradients(x, y)
                return loss, logits, reduce_and_apply(grads)

        self._accumulate_fn, self._step_fn, self._predict_fn = accumulate, step, predict

    def train_step(self, batches: Sequence[Batch], lr: float) -> StepResult:
        spec, _, optimizer, _ = self._parts()
        if lr != self._lr:
            optimizer.learning_rate = lr  # assigns the optimizer's LR variable; no retrace
            self._lr = lr
        # The window's sums stay tensors: one host synchronisation per step, not per micro-batch.
        loss_sum, count, outputs = tf.constant(0.0, tf.float64), 0, []
        communication = tf.constant(0.0, tf.float64)
        for i, batch in enumerate(batches):
            x, y = _pixels(batch[0]), batch[1]
            if len(batch) == 3:  # augment.device=gpu: transformed eagerly, where TensorFlow places the ops
                assert spec.augment is not None, "build() with augment.device=gpu"
                x = augment_on_device(tf.convert_to_tensor(x), batch[2], spec.augment)
            if i < len(batches) - 1:
                loss, logits = self._metered(self._accumulate_fn, x, y)
            else:
                loss, logits, communication = self._metered(self._step_fn, x, y)
            loss_sum += tf.cast(loss, tf.float64) * len(y)
            outputs.append(logits)
            count += len(y)
        self._comm_seconds = float(communication)
        self._apply_masks()  # pruned weights stay exactly zero whatever the optimizer did
        return StepResult(float(loss_sum), count, np.concatenate([o.numpy() for o in outputs]))

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        loss_sum, logits = self._metered(self._eval_fn, _pixels(x), y)
        return StepResult(float(loss_sum), len(y), logits.numpy())

    def sync_batchnorm_statistics(self, mode: str) -> int:
        return sync_statistics(self._parts()[1], mode)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict_fn(_pixels(x)))

    def next_token_logits(self, tokens: np.ndarray, cache: Any | None) -> tuple[np.ndarray, Any]:
        if self._decode_fns is None:  # tf_backend/gpt.py: a traced prefill and an XLA-compiled step
            from tf_backend.gpt import generation_functions, network

            self._decode_fns = generation_functions(network(self._parts()[1]))
        prefill, step = self._decode_fns
        ids = tf.convert_to_tensor(np.asarray(tokens, np.int32))
        if cache is None:
            logits, keys, values = prefill(ids)
            position = int(tokens.shape[1])
        else:
            keys, values, position = cache
            logits, keys, values = step(ids, keys, values, tf.constant(position, tf.int32))
            position += 1
        return np.asarray(logits), (keys, values, position)

    def step_info(self) -> StepInfo:
        _, _, optimizer, precision = self._parts()
        lr = self._lr if self._lr is not None else float(np.asarray(optimizer.learning_rate))  # no read per step
        return StepInfo(lr=lr, loss_scale=precision.loss_scale(optimizer), comm_seconds=self._comm_seconds,
                        compiled=None if self._meter is None else self._meter.stats())

    def _metered(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)`, its XLA compiling counted and timed when train.compile is on. A model that XLA cannot
        compile (an op without an XLA kernel, such as tf.py_function) fails at its first compile, before
        anything ran: the steps then run as plain tf.functions, said in one line."""
        if self._meter is None:
            return fn(*args)
        try:
            return self._meter.call(fn, *args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            roles = {id(f): name for name, f in (("_accumulate_fn", self._accumulate_fn), ("_step_fn", self._step_fn),
                                                  ("_eval_fn", self._eval_fn))}
            if not self._xla_fns or id(fn) not in roles or ("XLA" not in str(exc) and "compil" not in str(exc)):
                raise
            ops = sorted(set(re.findall(r"No registered '(\w+)' OpKernel for XLA", str(exc))))
            why = f"no XLA kernel for {', '.join(ops)}" if ops else str(exc).strip().splitlines()[0][:160]
            self._meter.note(f"train.compile: XLA cannot compile this model ({why}): its steps run as plain "
                             "tf.functions")
            self._xla_failed = True
            self._compile()  # the same functions without XLA; the failed call ran nothing
            return self._meter.call(getattr(self, roles[id(fn)]), *args)

    # --- optional capabilities ---------------------------------------------------------------------------
    def _kernels(self) -> dict[str, tuple[Any, int]]:
        """Conv and dense kernels by path, with the axis of their output channels (depthwise: the input's)."""
        _, model, _, _ = self._parts()
        out = {}
        for layer in model._flatten_layers(include_self=False, recursive=True):
            kernel = getattr(layer, "kernel", None)
            if kernel is not None and len(kernel.shape) > 1:
                depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
                out[kernel.path] = (kernel, 2 if depthwise else len(kernel.shape) - 1)
        return out

    def prunable(self) -> dict[str, PrunableWeight]:
        return {path: PrunableWeight(np.array(var), axis) for path, (var, axis) in self._kernels().items()}

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


def _pixels(x: Any) -> Any:
    """uint8 pixels (kept 8-bit until the model) scaled to float32 [0, 1], eagerly where TensorFlow places the
    ops (the GPU when there is one); float batches as they are."""
    if getattr(x, "dtype", None) == np.uint8:
        return tf.cast(tf.convert_to_tensor(x), tf.float32) / 255.0
    return x
