"""The configuration tree: frozen dataclasses with defaults, loaded from YAML plus dotted CLI overrides.

Every field carries its help text in its metadata; `docs/config.md` is generated from it
(`python -m hvdtrain config-docs`), and a test keeps the two in sync.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from hvdtrain.errors import ConfigError
from hvdtrain.registry import BACKEND_NAMES
from hvdtrain.tasks.task import TASKS, TaskSpec, check_metric_field, check_task_keys, resolve_task

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Section = TypeVar("_Section", bound="DataclassInstance")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, min: float | None = None,
           max: float | None = None, below: float | None = None, above: float | None = None,
           min_items: int = 1) -> Any:
    """A config field: its default, one line of help, and the values it accepts (`min_items`: lists)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "below": below, "above": above,
            "min_items": min_items}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Where training samples come from and how they are split."""

    name: str = option("digits", "Dataset source: digits, synthetic, npz (a .npz file, or a folder of "
                                 "x.npy/y.npy: images or feature vectors), diabetes (regression), image_folder "
                                 "(streamed), shards (tar shards, streamed), cifar10, "
                                 "mnist (docs/data.md), tokens (a `tokenize` directory) or text (UTF-8 files, "
                                 "tokenized on first use: docs/language-models.md), "
                                 "or 'package.module:function' returning your own map-style dataset.")
    path: str | None = option(None, "File (npz) or folder (npy arrays; image_folder: class sub-folders, or train/ and "
                                    "val/ of them; shards: a folder of .tar shards or a {000..009} brace pattern; "
                                    "cifar10: cifar-10-batches-py or the folder holding it; mnist: the IDX files) to "
                                    "read; unused by digits/synthetic.")
    val_fraction: float = option(0.2, "Fraction of samples held out for validation, split "
                                      "deterministically from `seed`.", min=0.0, below=1.0)
    synthetic_samples: int = option(2048, "Number of images the synthetic source generates.", min=1)
    synthetic_shape: tuple[int, int, int] = option((32, 32, 3), "Synthetic image shape [H, W, C].", min=1)
    num_classes: int = option(10, "Number of classes of the synthetic source.", min=2)
    image_size: tuple[int, int] | None = option(None, "image_folder, shards, your own dataset: resize every image "
                                                      "to [H, W]; null keeps the size (then all images must match).",
                                                min=1)
    prefetch_batches: int = option(2, "Batches the loader prepares ahead of the step.", min=1)
    workers: int | None = option(None, "Worker processes per rank that read, decode and augment batches; 0 = a "
                                       "thread of the training process; null = the cores left to each rank for "
                                       "on-disk data (image_folder, shards, your own dataset), 0 for in-memory data.",
                                 min=0)
    worker_timeout_s: float = option(300.0, "A worker that has not delivered a batch for this long is hung: the "
                                            "rank stops with an error naming it.", above=0.0)
    on_error: str = option("stop", "An image that cannot be read mid-epoch: stop (every rank stops with one line "
                                   "naming the file) or skip (left out of its batch, counted as skipped_samples).",
                           choices=("stop", "skip"))
    log_samples: bool = option(False, "Write samples/epoch-NNN.tsv (rank, step and name of every training sample "
                                      "used), to audit sharding.")
    block_size: int = option(256, "tokens, text: the context length; a sample is a window of block_size + 1 "
                                  "tokens (docs/language-models.md).", min=1)
    tokenizer: str = option("char", "text: byte, char or bpe (as `hvdtrain tokenize --tokenizer`).",
                            choices=("byte", "char", "bpe"))
    vocab_size: int | None = option(None, "text with bpe: the vocabulary's size (null: 8192).", min=2)
    cache_dir: str | None = option(None, "text: where tokenized corpora are kept (null: $XDG_CACHE_HOME/hvdtrain/text, "
                                         "~/.cache/hvdtrain/text).")

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.tokenizer != "bpe":
            raise ConfigError(f"config key data.vocab_size applies to data.tokenizer=bpe ({self.tokenizer}'s "
                              "vocabulary follows from the text): set data.vocab_size=null or data.tokenizer=bpe")
        if self.name not in BUILTIN_DATASETS and not ModelConfig.is_import_path(self.name):
            close = difflib.get_close_matches(self.name, BUILTIN_DATASETS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"config key data.name: {self.name!r} is neither a built-in source "
                              f"({', '.join(BUILTIN_DATASETS)}) nor an import path: {hint}or write "
                              "data.name=my_pkg.data:build")

    @property
    def user_dataset(self) -> bool:
        """Whether `name` is an import path to the user's own dataset builder."""
        return self.name not in BUILTIN_DATASETS


BUILTIN_DATASETS = ("digits", "synthetic", "npz", "image_folder", "shards", "cifar10", "mnist", "diabetes", "tokens",
                    "text")
BUILTIN_MODELS = ("mlp", "cnn", "mobilenet", "resnet", "resnet50", "gpt")
@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (docs/models.md)."""

    name: str = option("cnn", "mlp, cnn, mobilenet (depthwise-separable blocks), resnet (for 32x32 inputs), "
                              "resnet50 (torchvision's ImageNet ResNet-50, v1.5), gpt (a decoder-only "
                              "Transformer in the GPT-2 layout, for task=language_model), or "
                              "'package.module:function' returning a torch nn.Module or a Keras model.")
    channels: tuple[int, ...] = option((32, 64), "cnn: output channels of each conv block (3x3 conv, ReLU, 2x2 "
                                                 "max-pool while the feature map is at least 2x2); mobilenet: of "
                                                 "each depthwise-separable block (x width_multiplier).", min=1)
    hidden_units: tuple[int, ...] | None = option(
        None, "Units of each hidden dense layer (mlp body; head of cnn, mobilenet, resnet and resnet50); [] for "
              "none; null: the model's own, [128], except [] for resnet50 (torchvision's pool -> fc).",
        min=1, min_items=0)
    dropout: float = option(0.0, "Dropout rate after each hidden dense layer; gpt: on the embeddings, the attention "
                                 "weights and each block's two residual branches.", min=0.0, below=1.0)
    width_multiplier: float = option(1.0, "mobilenet: scales every block's channels; resnet: scales the stage "
                                          "widths 16, 32, 64; resnet50: the stem's 64 and the bottleneck widths "
                                          "64, 128, 256, 512 (outputs x4) (channels are rounded, at least 1).",
                                     above=0.0)
    depth: int = option(20, "resnet: layers, 6n + 2 (n basic blocks per stage): 8, 14, 20, 32, 56... "
                            "(resnet50 is always [3, 4, 6, 3] bottlenecks).", min=8)

    n_layer: int = option(4, "gpt: Transformer blocks.", min=1)
    n_head: int = option(4, "gpt: attention heads per block (n_embd must divide by it).", min=1)
    n_embd: int = option(128, "gpt: width of the embeddings and the residual stream.", min=1)
    bias: bool = option(False, "gpt: biases in the linear layers and LayerNorms (GPT-2 has them; the baby GPT of "
                               "docs/language-models.md does not).")

    batchnorm_stats: str = option("average", "BatchNorm running statistics made identical on every rank before "
                                             "each evaluation, checkpoint and final save: average (over the "
                                             "ranks) or rank0 (docs/batchnorm.md).", choices=("average", "rank0"))
    sync_batchnorm: bool = option(False, "BatchNorm statistics of each training batch computed over the global "
                                         "batch (all ranks), for built-in and user models (docs/batchnorm.md).")

    def __post_init__(self) -> None:
        if self.name not in BUILTIN_MODELS and ":" not in self.name:
            raise ConfigError(f"config key model.name: {self.name!r} is neither a built-in model "
                              f"({', '.join(BUILTIN_MODELS)}) nor an import path: write e.g. "
                              "model.name=my_pkg.models:build")
        if ":" in self.name and not self.is_import_path(self.name):
            raise ConfigError(f"config key model.name: {self.name!r} is not an import path "
                              "'package.module:function': write e.g. model.name=my_pkg.models:build")
        if self.n_embd % self.n_head:
            raise ConfigError(f"config key model.n_embd: {self.n_embd} does not divide into model.n_head="
                              f"{self.n_head} heads: choose n_embd a multiple of n_head")
        if self.depth % 6 != 2:
            raise ConfigError(f"config key model.depth: {self.depth} is not 6n + 2: use 8, 14, 20, 32, 44 or 56")
        # null resolves here, so the saved config.yaml (and its hash) names the head that was built.
        object.__setattr__(self, "hidden_units", self.head_units())

    def head_units(self) -> tuple[int, ...]:
        """The hidden dense layers of the head: `hidden_units`, or when it is null the model's own."""
        if self.hidden_units is not None:
            return self.hidden_units
        return () if self.name == "resnet50" else (128,)

    @staticmethod
    def is_import_path(name: str) -> bool:
        """Whether `name` is written 'package.module:function' (dotted identifiers, one colon)."""
        module, _, attr = name.partition(":")
        return attr.isidentifier() and all(part.isidentifier() for part in module.split("."))

    def scaled(self, width: int) -> int:
        """A width times width_multiplier, rounded, at least 1."""
        return max(1, round(width * self.width_multiplier))


@dataclass(frozen=True)
class AugmentConfig:
    """Random training-image transforms with Keras ImageDataGenerator's keywords and meanings.

    Images reach augmentation scaled to [0, 1] (hvdtrain's loaders do that), so value-unit keywords
    (`cval`, `channel_shift_range`) are in [0, 1] units: divide a Keras value meant for 0-255 images by
    255. Random transforms touch training batches only; `rescale` and the normalisations apply to
    training and validation images alike. docs/augmentation.md maps every key to Keras and torchvision.
    """

    rotation_range: float = option(0.0, "Degrees: rotate by U(-r, r).", min=0.0)
    width_shift_range: int | float | tuple[float, ...] = option(
        0.0, "Float < 1: fraction of the width, >= 1: pixels, drawn from U(-r, r); int n: whole pixels in "
             "(-n, n); list: one of its values with a random sign (as Keras).", min=0.0)
    height_shift_range: int | float | tuple[float, ...] = option(
        0.0, "As width_shift_range, for the height.", min=0.0)
    shear_range: float = option(0.0, "Degrees: shear angle from U(-s, s).", min=0.0)
    zoom_range: float | tuple[float, float] = option(
        0.0, "z: zoom factors from [1-z, 1+z]; [lower, upper]: from that interval; x and y drawn "
             "independently (factors > 1 zoom out, as in Keras).", min=0.0)
    fill_mode: str = option("nearest", "How points outside the image are filled (SciPy's definitions, as "
                                       "Keras).", choices=("constant", "nearest", "reflect", "wrap"))
    cval: float = option(0.0, "Fill value for fill_mode=constant (in [0, 1] image units).")
    horizontal_flip: bool = option(False, "Flip left-right with probability 1/2.")
    vertical_flip: bool = option(False, "Flip upside-down with probability 1/2.")
    brightness_range: tuple[float, float] | None = option(
        None, "[lower, upper]: multiply pixel values by a factor from U(lower, upper), clipped to "
              "[0, 1].", min=0.0)
    channel_shift_range: float = option(0.0, "Add U(-c, c) to every channel, clipped to the image's own "
                                             "min and max (in [0, 1] image units).", min=0.0)
    rescale: float | None = option(None, "Multiply pixels by this after the transforms (images are "
                                         "already in [0, 1]).")
    featurewise_center: bool = option(False, "Subtract the per-channel mean of the whole training set "
                                             "(computed across all ranks).")
    featurewise_std_normalization: bool = option(False, "Divide by the per-channel std of the whole "
                                                        "training set (+1e-6).")
    samplewise_center: bool = option(False, "Subtract each image's own mean.")
    samplewise_std_normalization: bool = option(False, "Divide each image by its own std (+1e-6).")
    kernel: str = option("auto", "Which kernel transforms numpy batches: native (a fused multi-threaded C++ kernel, "
                                 "compiled on first use), framework (the backend's torch / TensorFlow ops), or auto "
                                 "(native when a C++ compiler is available, else framework).",
                         choices=("auto", "native", "framework"))
    device: str = option("auto", "Where random transforms run: cpu (in the loader's background thread, with `kernel`), "
                                 "gpu (inside the training step, with the framework's ops, on the rank's GPU), or "
                                 "auto (gpu when training on a GPU, else cpu). The same pixels either way.",
                         choices=("auto", "cpu", "gpu"))

    def __post_init__(self) -> None:
        lower, upper = self.zoom_bounds()
        if not 0 < lower <= upper:
            raise ConfigError(f"config key augment.zoom_range: {self.zoom_range!r} gives zoom factors "
                              f"[{lower:g}, {upper:g}]: use a number < 1 or [lower, upper] with "
                              "0 < lower <= upper")
        if self.brightness_range is not None and self.brightness_range[0] > self.brightness_range[1]:
            raise ConfigError(f"config key augment.brightness_range: {list(self.brightness_range)} has "
                              "lower > upper: write it as [lower, upper]")

    def zoom_bounds(self) -> tuple[float, float]:
        """The interval zoom factors are drawn from (Keras: z means [1-z, 1+z])."""
        if isinstance(self.zoom_range, tuple):
            return self.zoom_range
        return 1.0 - self.zoom_range, 1.0 + self.zoom_range

    @property
    def random(self) -> bool:
        """Whether any random transform is configured."""
        return bool(self.rotation_range or _any_shift(self.width_shift_range)
                    or _any_shift(self.height_shift_range) or self.shear_range
                    or self.zoom_bounds() != (1.0, 1.0) or self.horizontal_flip or self.vertical_flip
                    or self.brightness_range is not None or self.channel_shift_range)

    @property
    def standardizes(self) -> bool:
        """Whether rescaling or a normalisation is configured."""
        return bool(self.rescale is not None or self.featurewise_center
                    or self.featurewise_std_normalization or self.samplewise_center
                    or self.samplewise_std_normalization)


def _any_shift(value: int | float | tuple[float, ...]) -> bool:
    return bool(value) if not isinstance(value, tuple) else any(value)


@dataclass(frozen=True)
class TrainConfig:
    """How long and in what steps to train."""

    epochs: int = option(10, "Number of passes over the training set.", min=1)
    batch_size: int = option(32, "Per-rank micro-batch (the Horovod convention): the global batch is "
                                 "batch_size x world size.", min=1)
    max_steps_per_epoch: int | None = option(None, "Cap on optimizer steps per epoch (null: one pass).",
                                             min=1)
    max_steps: int | None = option(None, "Optimizer steps in all (the language-model convention): the epochs follow "
                                         "from it (the last one stops at this step) and train.epochs is not used; "
                                         "cosine decay runs over these steps. null: train.epochs whole epochs.",
                                   min=1)
    eval_every_steps: int | None = option(
        None, "Validation, metrics.jsonl's record, the best checkpoint and early stopping every N optimizer steps "
              "(nanoGPT's eval_interval): the run's epochs become periods of N steps, each drawing its batches from "
              "a new shuffle (not the rest of a pass). The same as max_steps_per_epoch=N; null: at each pass's end.",
        min=1)
    eval_batch_size: int | None = option(
        None, "Per-rank batch size for evaluation; null: batch_size. Evaluation holds one batch's activations at "
              "once (at 224x224 the cnn's batches of 256 took 1.2 GB more than its training steps): raise it "
              "where memory allows.", min=1)
    threads_per_rank: int = option(0, "CPU threads per rank; 0 = OMP_NUM_THREADS if set, else usable cores // ranks "
                                      "on this node.", min=0)
    resume: str | None = option(None, "auto: continue from the newest complete checkpoint in run.dir (or start "
                                      "fresh if there is none); a path: from that checkpoint directory.")
    init_from: str | None = option(None, "Fine-tuning: start from the model weights (only) of a checkpoint "
                                         "directory or of a finished run directory (its final model).")
    init_skip_mismatched: bool = option(False, "With init_from: keep the fresh initialisation of parameters whose "
                                               "shape differs (e.g. a new head) instead of refusing.")
    freeze: tuple[str, ...] = option((), "Parameter-name patterns (fnmatch, e.g. 'features.*') whose parameters "
                                         "stay fixed; names are the backend's own (see docs/efficiency.md).",
                                     min_items=0)
    loss: str | None = option(None, "The training loss: cross_entropy, mse, mae, huber, bce, or your own "
                                    "'package.module:function' (framework tensors (outputs, targets) -> per-sample "
                                    "losses); null: the task's (docs/tasks.md).")
    metrics: tuple[str, ...] | None = option(None, "Metrics recorded as train_<name> and val_<name>: accuracy, "
                                                   "top5_accuracy, mae, rmse, r2, f1_micro, f1_macro, exact_match, or "
                                                   "your own 'package.module:name' (docs/tasks.md); null: the task's.",
                                             min_items=0)

    compile: bool = option(False, "Compiled steps (docs/performance.md): torch runs the model through torch.compile "
                                  "(Inductor), TensorFlow the forward and backward pass with XLA (jit_compile); "
                                  "Horovod's allreduce stays outside the compiled part. Results equal eager "
                                  "training's; summary.json's compile_time_s says what compiling cost.")
    compile_mode: str = option("default", "torch.compile's mode with train.compile (torch only: TensorFlow's XLA has "
                                          "no modes); reduce-overhead adds CUDA graphs on GPUs.",
                               choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))

    def __post_init__(self) -> None:
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"train.compile_mode={self.compile_mode} chooses how train.compile compiles, but "
                              "train.compile=false: set train.compile=true, or leave train.compile_mode at default")
        # null resolves here, so config.yaml (and evaluate on the finished run) names the batch evaluated with.
        object.__setattr__(self, "eval_batch_size", self.eval_batch())
        if self.eval_every_steps is not None:
            if self.max_steps_per_epoch not in (None, self.eval_every_steps):
                raise ConfigError(f"train.eval_every_steps={self.eval_every_steps} makes epochs of that many steps, "
                                  f"but train.max_steps_per_epoch={self.max_steps_per_epoch}: set one of them")
            object.__setattr__(self, "max_steps_per_epoch", self.eval_every_steps)

    def eval_batch(self) -> int:
        """The per-rank evaluation batch: eval_batch_size, or when it is null batch_size."""
        return self.eval_batch_size or self.batch_size


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its hyper-parameters."""

    name: str = option("sgd", "Optimizer.", choices=("sgd", "adam", "adamw"))
    lr: float = option(0.05, "Base learning rate, before any scaling by world size.", min=0.0)
    momentum: float = option(0.9, "sgd: momentum.", min=0.0, below=1.0)
    nesterov: bool = option(False, "sgd: use Nesterov momentum.")
    weight_decay: float = option(0.0, "sgd/adam: L2 penalty added to the gradient; adamw: decoupled "
                                      "weight decay.", min=0.0)
    weight_decay_on: str = option("all", "Which parameters weight_decay applies to: all, or matrices (those of 2 "
                                         "or more dimensions: weights of dense, conv and embedding layers, not "
                                         "biases or normalisation scales, as nanoGPT and GPT-2 trainers do).",
                                  choices=("all", "matrices"))
    beta1: float = option(0.9, "adam/adamw: first-moment decay.", min=0.0, below=1.0)
    beta2: float = option(0.999, "adam/adamw: second-moment decay.", min=0.0, below=1.0)
    eps: float = option(1e-8, "adam/adamw: denominator epsilon.", min=0.0)
    schedule: str = option("constant", "LR schedule after scaling, multiplied with the warmup ramp "
                           "(formulas: docs/policy.md).", choices=("constant", "step", "cosine"))
    step_milestones: tuple[float, ...] = option((30.0, 60.0), "step: epochs (fractions allowed) at which "
                                                "the LR is multiplied by step_gamma.", min=0.0)
    step_gamma: float = option(0.1, "step: factor applied at each milestone.", above=0.0, max=1.0)
    cosine_min_ratio: float = option(0.0, "cosine: final LR as a fraction of the scaled LR.", min=0.0, max=1.0)
    param_groups: tuple[str, ...] = option((), "'PATTERN=MULTIPLIER' entries: parameters whose name matches "
                                               "PATTERN (fnmatch; first match wins) train at LR x MULTIPLIER.",
                                           min_items=0)

    def __post_init__(self) -> None:
        for entry in self.param_groups:
            pattern, sep, mult = entry.rpartition("=")
            try:
                ok = bool(sep and pattern) and float(mult) >= 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(f"config key optim.param_groups: {entry!r} is not PATTERN=MULTIPLIER: write it "
                                  "like 'head.*=10' (a multiplier >= 0)")


@dataclass(frozen=True)
class RegularizationConfig:
    """Penalties on the training loss (docs/efficiency.md); distinct from the optimizer's decoupled
    `optim.weight_decay`. Kernels are the weights of conv and dense layers (ndim > 1), not biases or norms."""

    l1: float = option(0.0, "Add l1 x sum |w| over all kernels to the training loss.", min=0.0)
    l2: float = option(0.0, "Add l2 x sum w^2 over all kernels to the training loss (Keras' convention: no "
                            "factor 1/2).", min=0.0)
    label_smoothing: float = option(0.0, "Train on targets (1 - e) x one-hot + e / classes (evaluation uses "
                                         "plain cross-entropy).", min=0.0, below=1.0)


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning of kernels during training (docs/efficiency.md). The output layer is never pruned."""

    method: str = option("none", "unstructured: single weights by |w|; channels: whole output channels (conv) or "
                                 "units (dense) by the L2 norm of their weights; none: off.",
                         choices=("none", "unstructured", "channels"))
    scope: str = option("global", "unstructured: rank weights across all kernels together (global) or within "
                                  "each kernel (layer; channels are always ranked per layer).",
                        choices=("global", "layer"))
    target_sparsity: float = option(0.5, "Fraction of the prunable weights (or channels) that end at zero.",
                                    min=0.0, below=1.0)
    schedule: str = option("gradual", "gradual: sparsity s_f x (1 - (1 - p)^3) with p the progress from start_epoch "
                                      "to end_epoch (Zhu & Gupta 2017); oneshot: the target at once when "
                                      "start_epoch is done, the remaining epochs fine-tune.",
                           choices=("gradual", "oneshot"))
    start_epoch: int = option(0, "Completed epochs before pruning starts.", min=0)
    end_epoch: int | None = option(None, "gradual: completed epochs when the target is reached (null: "
                                         "train.epochs - 1, leaving a last epoch to recover).", min=1)
    every_steps: int = option(10, "gradual: masks are recomputed every this many optimizer steps.", min=1)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a trained teacher (docs/efficiency.md)."""

    teacher: str | None = option(None, "Run directory (its config.yaml and final model) or checkpoint directory "
                                       "inside one, trained with the same backend and data; null: off.")
    temperature: float = option(4.0, "Softmax temperature T of both teacher and student logits.", above=0.0)
    alpha: float = option(0.5, "loss = alpha x T^2 x KL(teacher || student) + (1 - alpha) x cross-entropy.",
                          min=0.0, max=1.0)


@dataclass(frozen=True)
class PolicyConfig:
    """How a step is computed and communicated: the same decisions on every backend (docs/policy.md)."""

    accumulation_steps: int = option(1, "Micro-batches whose gradients are averaged locally before one "
                                        "allreduce and one optimizer step.", min=1)
    precision: str = option("fp32", "Compute precision: fp32, bf16 (autocast / mixed_bfloat16) or fp16 "
                            "(autocast / mixed_float16 with dynamic loss scaling).",
                            choices=("fp32", "bf16", "fp16"))
    loss_scale_init: float = option(65536.0, "fp16: initial loss scale; halved on every overflow (the step "
                                             "is skipped), doubled after loss_scale_growth_interval good "
                                             "steps.", min=1.0)
    loss_scale_growth_interval: int = option(2000, "fp16: good steps before the loss scale doubles.", min=1)
    grad_clip_norm: float | None = option(None, "Clip the global gradient norm to this, after the allreduce "
                                                "and after unscaling (null: no clipping).", above=0.0)
    compression: str = option("none", "What crosses the wire in the gradient allreduce: none or fp16 "
                              "(Horovod's Compression.fp16).", choices=("none", "fp16"))
    reduce_op: str = option("average", "Gradient reduction across ranks: average, or adasum (needs the MPI "
                            "controller and a power-of-2 world size).", choices=("average", "adasum"))
    lr_scaling: str = option("linear", "linear: LR = optim.lr x world size x accumulation_steps (with "
                             "adasum: Horovod's rule, x local size on NCCL builds, else x 1); none: optim.lr "
                             "as given.", choices=("linear", "none"))
    warmup_epochs: float = option(0.0, "Ramp the LR linearly from optim.lr to the scaled LR over this many "
                                       "epochs (Goyal et al. 2017); fractions allowed.", min=0.0)
    warmup_steps: int = option(0, "Ramp the LR linearly from zero over this many optimizer steps (the "
                                  "language-model convention: step t, from 0, trains at the scaled LR x (t + 1) / "
                                  "(warmup_steps + 1)); cosine decay then starts where the ramp ends. Not with "
                                  "warmup_epochs.", min=0)

    def __post_init__(self) -> None:
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError("policy.warmup_epochs and policy.warmup_steps are two different ramps (from optim.lr "
                              "per epoch, from zero per step): set one of them to 0")
        if self.reduce_op == "adasum" and self.precision == "fp16":
            raise ConfigError("policy.reduce_op=adasum cannot be combined with policy.precision=fp16 "
                              "(Horovod's Adasum optimizer cannot skip an overflowing step): use bf16 or "
                              "reduce_op=average")
        if self.reduce_op == "adasum" and self.grad_clip_norm is not None:
            raise ConfigError("policy.reduce_op=adasum cannot be combined with policy.grad_clip_norm "
                              "(Adasum reduces the optimizer's updates, not gradients): set "
                              "policy.grad_clip_norm=null or reduce_op=average")


@dataclass(frozen=True)
class HorovodConfig:
    """Horovod's runtime knobs, passed through as HOROVOD_* (and NCCL_*) settings (null: Horovod's own default, or
    whatever the environment says)."""

    fusion_threshold_mb: float | None = option(None, "Tensor fusion buffer in MiB (Horovod default 128; "
                                                     "0 disables fusion).", min=0.0)
    cycle_time_ms: float | None = option(None, "How often the background thread batches pending "
                                               "collectives, in ms (Horovod default 1; a process started "
                                               "alone, one rank, gets 20: nothing crosses ranks).", above=0.0)
    timeline: str | None = option(None, "Write Horovod's timeline (chrome://tracing JSON) to this file; a "
                                        "relative path is inside run.dir.")
    timeline_mark_cycles: bool = option(False, "Mark background-thread cycles in the timeline.")
    autotune: bool = option(False, "Let Horovod tune fusion threshold and cycle time while training.")
    stall_check_time_s: float | None = option(None, "Seconds before Horovod warns that some ranks have "
                                                    "not submitted a collective (Horovod default 60).",
                                              above=0.0)
    stall_shutdown_time_s: float | None = option(None, "Seconds after which a stalled job is shut down "
                                                       "(Horovod default 0: never).", min=0.0)
    hierarchical_allreduce: bool | None = option(None, "GPU builds: allreduce within each node (NCCL), then across "
                                                       "nodes, then broadcast within the node (Horovod default off).")
    hierarchical_allgather: bool | None = option(None, "GPU builds: the same two-level scheme for allgather.")
    nccl_socket_ifname: str | None = option(None, "NCCL_SOCKET_IFNAME: the network interfaces NCCL uses between "
                                                  "nodes, e.g. ib0 or ^lo,docker0 (docs/gpu.md).")
    nccl_ib_disable: bool | None = option(None, "NCCL_IB_DISABLE: true keeps NCCL off InfiniBand (TCP sockets only).")
    nccl_debug: str | None = option(None, "NCCL_DEBUG: NCCL's log level.", choices=("VERSION", "WARN", "INFO", "TRACE"))


@dataclass(frozen=True)
class CheckpointConfig:
    """When rank 0 writes checkpoints (run.dir/checkpoints, see docs/long-runs.md)."""

    every_epochs: int = option(1, "Write a checkpoint every this many epochs and after the last (0: never).",
                               min=0)
    every_steps: int = option(0, "Also write a checkpoint every this many optimizer steps, mid-epoch; resuming "
                                 "from one continues inside the epoch (0: off).", min=0)
    keep_last: int = option(2, "Checkpoints kept (epoch and mid-epoch ones together); older ones are deleted "
                               "(0: keep all).", min=0)
    best_metric: str | None = option("auto", "Keep a copy of the best epoch by this metrics.jsonl field in "
                                             "checkpoints/best (minimised or maximised as its metric says); auto: "
                                             "val_ and the task's first metric (val_accuracy for classification); "
                                             "null: no copy.")


@dataclass(frozen=True)
class ElasticConfig:
    """Elastic training (docs/long-runs.md). It is on when horovodrun starts the job elastically (--min-np,
    --max-np, --host-discovery-script, Gloo); these keys have no effect otherwise."""

    commit_every_steps: int = option(20, "Commit the training state in memory every this many optimizer steps "
                                         "(and at every epoch end); after a worker fails, the survivors "
                                         "roll back to the last commit.", min=1)


@dataclass(frozen=True)
class CallbacksConfig:
    """Callbacks run by the loop on every rank (docs/long-runs.md): early stopping and user hooks."""

    early_stopping_metric: str | None = option(None, "Stop when this metrics.jsonl field has not improved for "
                                                     "early_stopping_patience epochs (minimised or maximised as its "
                                                     "metric says; null: off).")
    early_stopping_patience: int = option(3, "Epochs without improvement before stopping.", min=1)
    early_stopping_min_delta: float = option(0.0, "Smallest change that counts as an improvement.", min=0.0)
    user: tuple[str, ...] = option((), "Custom callbacks by import path, 'package.module:name', where name is a "
                                       "class or function called with the Config that returns the callback "
                                       "(hooks: hvdtrain/callbacks.py).", min_items=0)


@dataclass(frozen=True)
class RunConfig:
    """Where outputs go and how progress is shown."""

    dir: str = option("runs/{data}-{model}-{backend}", "Run directory (rank 0 writes config.yaml, "
                      "metrics.jsonl, summary.json, weights there). {data}, {model}, {backend} are "
                      "replaced by data.name, model.name and backend.")
    progress: str = option("auto", "Progress display on rank 0: a bar on a terminal, plain lines otherwise.",
                           choices=("auto", "bar", "lines", "off"))
    overwrite: bool = option(False, "Allow a new run in a run.dir that holds another run's outputs (they are "
                                    "replaced); without it such a run.dir is refused unless train.resume is set.")
    log_every_steps: int = option(0, "Every this many optimizer steps, rank 0 appends the step's loss, LR and "
                                     "loss scale to steps.jsonl and TensorBoard (0: off).", min=0)
    tensorboard: bool = option(True, "Rank 0 writes TensorBoard event files to run.dir/tensorboard (epoch metrics, "
                                     "LR, throughput, loss scale; per-step values with log_every_steps).")
    profile: bool = option(False, "Record where each step's time goes (data wait, compute, communication) to "
                                  "run.dir/profile/steps.csv and the summary, and Horovod's timeline to "
                                  "run.dir/profile/timeline.json unless horovod.timeline is set (also: --profile).")
    print_config: bool = option(False, "Rank 0 prints the whole resolved config before training (about 60 lines); "
                                       "otherwise one line points at run.dir/config.yaml, which always holds it.")


MLFLOW_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking (docs/tracking.md): rank 0 sends the run to MLflow, Weights & Biases and/or a tracker of
    the user's; one tracker run per run.dir."""

    mlflow_uri: str | None = option(None, "MLflow tracking server (http://host:port) or store (sqlite:///FILE); "
                                          "null: off.")
    experiment: str | None = option(None, "MLflow experiment (created if missing); null: '{data}-{model}' "
                                          "(data.name and model.name).")
    run_name: str | None = option(None, "The tracker run's name; null: run.dir's folder name.")
    wandb_project: str | None = option(None, "Weights & Biases project; null: off. The W&B run is written under "
                                             "run.dir/wandb/.")
    wandb_mode: str = option("offline", "offline: W&B writes the run to run.dir/wandb/ only (compute nodes "
                                        "without internet; `wandb sync` uploads it later); online: sent live too.",
                             choices=("offline", "online"))
    user: str | None = option(None, "A tracker of your own, 'package.module:factory': factory(cfg, run_dir, "
                                    "resuming) returns a hvdtrain.tracking.Tracker (docs/tracking.md).")
    log_model: bool = option(False, "Also send the final model file (model.pt or model.keras) as an artifact.")
    tags: tuple[str, ...] = option((), "Tags of the tracker runs: a map (team: vision) or 'KEY=VALUE' entries, "
                                       "e.g. [team=vision,site=hpc].",
                                   min_items=0)
    timeout_s: float = option(5.0, "Seconds one request to the tracker may take; after a failure the run goes "
                                   "on untracked (one warning) and `hvdtrain sync RUN_DIR` sends the rest later.",
                              above=0.0)

    def __post_init__(self) -> None:
        uri = self.mlflow_uri
        if uri is not None and uri.split(":", 1)[0] not in MLFLOW_SCHEMES:
            raise ConfigError(f"config key tracking.mlflow_uri: {uri!r} is not an MLflow tracking URI: give a server "
                              "(http://host:5000) or a store (sqlite:///mlflow.db), or null for no tracking")
        for entry in self.tags:
            if "=" not in entry or not entry.split("=", 1)[0].strip():
                raise ConfigError(f"config key tracking.tags: {entry!r} is not KEY=VALUE: write it as "
                                  "tracking.tags=[team=vision]")

    def tag_map(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.tags)

    def enabled(self) -> bool:
        return bool(self.mlflow_uri or self.wandb_project or self.user)


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one run."""

    backend: str = option("torch", "Framework that trains the model.", choices=BACKEND_NAMES)
    task: str = option("classification", "What the model learns: classification (int labels), regression (float "
                                         "targets), multilabel (0/1 per label) or language_model (the next token "
                                         "of each position, docs/language-models.md); sets the default loss and "
                                         "metrics (docs/tasks.md).", choices=TASKS)
    seed: int = option(42, "Seed for model init, the validation split and data order.", min=0)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    horovod: HorovodConfig = field(default_factory=HorovodConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check_task_keys(self.task, self.train.loss, self.train.metrics)
        if self.task != "classification" and self.distill.teacher:
            raise ConfigError(f"distill.teacher distils class probabilities, but task={self.task}: distil a "
                              "classification run, or set distill.teacher=null")
        sequence_model = self.model.name == "gpt" or self.model.is_import_path(self.model.name)
        if self.task == "language_model" and not sequence_model:
            raise ConfigError(f"task=language_model needs a sequence model, and model.name={self.model.name} takes "
                              "images: set model.name=gpt (or your own model by import path)")
        if self.model.name == "gpt" and self.task != "language_model":
            raise ConfigError(f"model.name=gpt predicts next tokens, but task={self.task}: set task=language_model")
        token_data = self.data.name in ("tokens", "text") or self.data.user_dataset
        if self.task == "language_model" and not token_data:
            raise ConfigError(f"task=language_model trains on token windows, but data.name={self.data.name}: set "
                              "data.name=tokens with data.path=DIR (written by `python -m hvdtrain tokenize`), or "
                              "data.name=text with data.path=FILE_OR_FOLDER")
        if self.data.name in ("tokens", "text") and self.task != "language_model":
            raise ConfigError(f"data.name={self.data.name} gives token windows, but task={self.task}: set "
                              "task=language_model")
        if self.task not in ("classification", "language_model") and self.regularization.label_smoothing:
            raise ConfigError(f"regularization.label_smoothing smooths class labels, but task={self.task}: set "
                              "regularization.label_smoothing=0")
        if self.backend == "tensorflow" and self.train.compile_mode != "default":
            raise ConfigError(f"train.compile_mode={self.train.compile_mode} is a torch.compile mode, but "
                              "backend=tensorflow compiles with XLA, which has none: leave train.compile_mode at "
                              "default")
        if self.checkpoint.best_metric == "auto":  # resolved here, so config.yaml names the field
            object.__setattr__(self, "checkpoint", dataclasses.replace(
                self.checkpoint, best_metric="val_" + self.metric_names()[0] if self.metric_names() else "val_loss"))
        check_metric_field(self.metric_names(), "checkpoint.best_metric", self.checkpoint.best_metric)
        check_metric_field(self.metric_names(), "callbacks.early_stopping_metric",
                           self.callbacks.early_stopping_metric)

    def metric_names(self) -> tuple[str, ...]:
        """The task's metrics as named in metrics.jsonl (without train_/val_), known without importing user code."""
        from hvdtrain.tasks.task import metric_names

        return metric_names(self.task, self.train.metrics)

    def task_spec(self) -> TaskSpec:
        """The resolved task, loss and metrics (user metrics imported)."""
        return resolve_task(self.task, self.train.loss, self.train.metrics)

    def lower_is_better(self, field_name: str) -> bool:
        """For a metrics.jsonl field: whether lower values are better (from its metric; loss and times: lower)."""
        return self.task_spec().lower_is_better(field_name)

    def run_dir(self) -> Path:
        """`run.dir` with its placeholders filled in."""
        return Path(self.run.dir.format(data=self.data.name, model=self.model.name, backend=self.backend))


# ---------------------------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML file (optional), applies `key=value` overrides, and validates everything."""
    return config_from_tree(_read_yaml(Path(path)) if path is not None else {}, overrides)


def config_from_tree(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] | dict[str, Any] = ()) -> Config:
    """A nested mapping of keys (as in a YAML file) with overrides applied: `key=value` texts, or a mapping of
    dotted keys to values; validated like load_config."""
    tree = json.loads(json.dumps(tree, default=str))  # a copy of plain values (tuples become lists, paths text)
    items = overrides.items() if isinstance(overrides, dict) else (_parse_override(o) for o in overrides)
    for key, value in items:
        _set_dotted(tree, key, value)
    tracking = tree.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("tags"), dict):
        # tracking.tags as a map (YAML `tags: {team: vision}`, or tracking.tags.team=vision): its KEY=VALUE entries
        tracking["tags"] = [f"{k}={'' if v is None else v}" for k, v in tracking["tags"].items()]
    return _build(Config, tree, prefix="")


def named_backend(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> str | None:
    """The `backend` that a config file and overrides name, if they name a valid one; never raises (it serves
    the reporting of an error in that same input)."""
    try:
        tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
        for item in overrides:
            key, value = _parse_override(item)
            if key == "backend":
                tree["backend"] = value
    except (ConfigError, ValueError, TypeError):
        return None
    name = tree.get("backend", Config.backend)
    return name if name in BACKEND_NAMES else None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found: pass an existing file to --config")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{path}'{where}: {problem}: fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc}): pass a readable YAML file") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(tree).__name__}")
    return tree


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not key=value: write it like optim.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[:i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type[_Section], tree: Any, prefix: str) -> _Section:
    if not isinstance(tree, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' is a section: set its keys, e.g. "
                          f"{prefix}{dataclasses.fields(cls)[0].name}=...")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in tree.items():
        if key not in fields:
            # Name the full dotted key the user wrote (trian.epochs, not just trian) to suggest the fix.
            leaf = next(iter(flatten(value, f"{key}."))) if isinstance(value, dict) and value else str(key)
            raise ConfigError(_unknown_key_message(prefix + leaf, cls, prefix))
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in tree:
            continue
        tp = hints[name]
        if _is_section(tp):
            values[name] = _build(tp, tree[name], prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(tree[name], tp, f, prefix + name)
    return cls(**values)


def _is_section(tp: Any) -> typing.TypeGuard[type[DataclassInstance]]:
    """Whether a field's type is a nested config class (a dataclass), not a value."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown_key_message(key: str, cls: type[DataclassInstance], prefix: str) -> str:
    known = [prefix + k for k in all_keys(cls)] + [prefix + f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(known))}"
    return f"unknown config key '{key}': {hint} (all keys: docs/config.md)"


def all_keys(cls: type[DataclassInstance] = Config) -> list[str]:
    """Every leaf key of a config class, dotted."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            keys += [f"{f.name}.{k}" for k in all_keys(tp)]
        else:
            keys.append(f.name)
    return keys


# ---------------------------------------------------------------------------------------------- values

_NAMES = {bool: ("true/false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings")}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        if type(None) in args:
            words.append("null")
        return ", ".join(words[:-1]) + " or " + words[-1]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_NAMES[args[0]][1]}"
        return f"a list of {len(args)} {_NAMES[args[0]][1]}"
    return _NAMES[tp][0]


def _coerce(value: Any, tp: Any, f: dataclasses.Field[Any], key: str) -> Any:
    meta = f.metadata
    if isinstance(value, dict):
        raise ConfigError(f"config key {key} is a value, not a section: set {key}=<{_describe(tp)}>")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # Alternatives are tried in the order written (int before float keeps Keras' int-vs-float
        # meanings apart); the first that accepts the value wins.
        for alternative in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, alternative, f, key)
            except ConfigError as exc:
                last = exc
                if isinstance(exc, _OutOfRange):  # right type, wrong value: that is the error to report
                    raise
        raise ConfigError(f"config key {key}: expected {_describe(tp)}, got {value!r} "
                          f"(set {key}=<{_describe(tp)}>)") from last
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)) \
                or (variadic and len(value) < meta["min_items"]):
            default = f.default if isinstance(f.default, tuple) and f.default else (1, 1)
            example = "[" + ", ".join(str(v) for v in default) + "]"
            raise ConfigError(f"config key {key}: expected {_describe(tp)}, got {value!r} "
                              f"(write it like {key}={example.replace(' ', '')})")
        return tuple(_coerce(v, args[0], f, key) for v in value)
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ok = False
        ok = ok and isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        if isinstance(value, bool) and meta.get("choices"):
            # YAML 1.1 reads an unquoted off/on as a boolean; map it back for keys like run.progress=off.
            value = "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not meta.get("choices"):
            value = str(value)
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"config key {key}: expected {_describe(tp)}, got {value!r} "
                          f"(set {key}=<{_describe(tp)}>)")
    _check_range(value, meta, key)
    return value


class _OutOfRange(ConfigError):
    """A value of the right type outside what the key accepts."""


def _check_range(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise _OutOfRange(f"config key {key}: {value!r} is not one of {', '.join(choices)} "
                          f"({hint}set {key}=<one of them>)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi, below, above = meta.get("min"), meta.get("max"), meta.get("below"), meta.get("above")
    if lo is not None and value < lo:
        raise _OutOfRange(f"config key {key}: {value!r} is below the minimum {lo} (set {key} >= {lo})")
    if hi is not None and value > hi:
        raise _OutOfRange(f"config key {key}: {value!r} is above the maximum {hi} (set {key} <= {hi})")
    if below is not None and value >= below:
        raise _OutOfRange(f"config key {key}: {value!r} must be below {below} (set {key} < {below})")
    if above is not None and value <= above:
        raise _OutOfRange(f"config key {key}: {value!r} must be above {above} (set {key} > {above})")


# ---------------------------------------------------------------------------------------------- output

def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML/JSON-friendly data (tuples become lists)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v: Any) -> Any:
    """A config value as plain data: sections become dicts, tuples lists."""
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted.key: value}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_hash(cfg: Config) -> str:
    """A short stable digest of the resolved config (same on every rank when configs agree)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from the dataclasses' metadata."""
    lines = ["# Config reference", "",
             "Generated from `hvdtrain/config.py` by `python -m hvdtrain config-docs > docs/config.md`; "
             "a test fails when the two differ.", "",
             "Set keys in a YAML file (`--config FILE`, nested sections) and override any of them on the "
             "command line as `section.key=value` (values are parsed as YAML: `model.channels=[16,32]`, "
             "`run.dir=runs/a`, `model.hidden_units=[64]`). Unknown keys, wrong types and out-of-range "
             "values stop the run with a one-line error and exit code 2.", ""]

    def section(cls: type[DataclassInstance], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        rows = []
        subs = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if _is_section(tp):
                subs.append((tp, f"{prefix}{f.name}."))
                continue
            meta = f.metadata
            allowed = ", ".join(f"`{c}`" for c in meta["choices"]) if meta.get("choices") else _describe(tp)
            bounds = []
            if meta.get("min") is not None:
                bounds.append(f">= {meta['min']}")
            if meta.get("above") is not None:
                bounds.append(f"> {meta['above']}")
            if meta.get("below") is not None:
                bounds.append(f"< {meta['below']}")
            if meta.get("max") is not None:
                bounds.append(f"<= {meta['max']}")
            if bounds:
                allowed += " (" + ", ".join(bounds) + ")"
            default = json.dumps(_plain(f.default))
            rows.append(f"| `{prefix}{f.name}` | `{default}` | {allowed} | {meta['help']} |")
        title = prefix.rstrip(".") or "top level"
        lines.extend([f"## {title}", "", (cls.__doc__ or "").strip(), "",
                      "| key | default | accepts | meaning |", "|---|---|---|---|", *rows, ""])
        for tp, sub_prefix in subs:
            section(tp, sub_prefix)

    section(Config, "")
    return "\n".join(lines)
