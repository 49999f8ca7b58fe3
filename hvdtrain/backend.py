"""The boundary between the loop and the frameworks: what a backend receives, what it implements, and a
registry that imports one lazily.

A backend gets a `BuildSpec` (model, optimizer, regularisation, distillation and one resolved
`StepPolicy`), never the whole config, and never imports the loop (hvdtrain.training). Horovod's
process-level API reaches the loop only through the backend's `comm` (hvdtrain.distributed.communicator).
Batches cross the boundary as NHWC float32 numpy arrays with the task's targets (int64 labels, or float32
(n, width)): `(x, y)`, or with
augment.device=gpu `(x, y, DeviceAugment)`, whose random transforms and standardisation the step applies on
its device before the forward pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from hvdtrain.augment.pipeline import DeviceAugment
from hvdtrain.config import AugmentConfig, DistillConfig, ModelConfig, OptimConfig, PolicyConfig, RegularizationConfig
from hvdtrain.distributed.communicator import Communicator
from hvdtrain.errors import ConfigError, UserError
from hvdtrain.registry import BACKENDS
from hvdtrain.tasks.task import TaskSpec


@dataclass(frozen=True)
class Placement:
    """Where a rank computes: its device and CPU threads."""

    device: str   # e.g. "cpu" or "cuda:0"
    threads: int  # CPU threads this rank uses


@dataclass(frozen=True)
class StepPolicy:
    """How every optimizer step is made, identical on both backends (docs/policy.md)."""

    precision: str = "fp32"                 # fp32 | bf16 | fp16
    accumulation_steps: int = 1             # micro-batches averaged locally before one allreduce
    grad_clip_norm: float | None = None     # after the allreduce and after unscaling
    compression: str = "none"               # none | fp16: what the gradient allreduce sends
    reduce_op: str = "average"              # average | adasum
    loss_scale_init: float = 65536.0        # fp16 only
    loss_scale_growth_interval: int = 2000  # fp16 only
    # False on one rank that no elastic launch can join: there is nothing to average, so the gradients go to the
    # optimizer as they are, without Horovod's hooks and background round trip (6.6% of the baby GPT's step in
    # one comparison, docs/policy.md). Every other part of the step is the same.
    allreduce: bool = True

    @classmethod
    def from_config(cls, policy: PolicyConfig, allreduce: bool = True) -> StepPolicy:
        return cls(precision=policy.precision, accumulation_steps=policy.accumulation_steps,
                   grad_clip_norm=policy.grad_clip_norm, compression=policy.compression,
                   reduce_op=policy.reduce_op, loss_scale_init=policy.loss_scale_init,
                   loss_scale_growth_interval=policy.loss_scale_growth_interval, allreduce=allreduce)


@dataclass(frozen=True)
class BuildSpec:
    """Everything a backend needs to build the model, its optimizer and its step."""

    model: ModelConfig
    image_shape: tuple[int, ...]            # (H, W, C), or (F,) for feature vectors
    num_classes: int
    seed: int
    optim: OptimConfig
    step: StepPolicy
    regularization: RegularizationConfig = RegularizationConfig()
    freeze: tuple[str, ...] = ()            # parameter-name patterns kept fixed (train.freeze)
    teacher: ModelConfig | None = None      # distillation: the teacher's architecture
    distill: DistillConfig = DistillConfig()
    augment: AugmentConfig | None = None    # augment.device=gpu: the transforms batches' DeviceAugment asks for
    task: TaskSpec = TaskSpec()             # the targets' kind and the loss (num_classes: the output width)
    compile: bool = False                   # train.compile: compiled steps, the allreduce outside them
    compile_mode: str = "default"           # train.compile_mode (torch.compile's mode)


Batch = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, DeviceAugment]


@dataclass(frozen=True)
class StepResult:
    """What a training step (its window of micro-batches) or an evaluation batch gives the loop: the loss summed
    over the samples, their number, and the model's outputs (float32, (count, width), in batch order), from which
    the loop takes the metrics' sums (hvdtrain/tasks/), the same code for both backends."""

    loss_sum: float
    count: int
    outputs: np.ndarray


@dataclass(frozen=True)
class StepInfo:
    """What the optimizer holds after the last step."""

    lr: float                  # read back from the optimizer
    loss_scale: float | None   # fp16's dynamic loss scale, else None
    comm_seconds: float        # the last step's exposed gradient-allreduce time (hvdtrain/reporting/profile.py)
    compiled: CompileStats | None = None  # train.compile: what compiling has cost so far; None when eager


@dataclass(frozen=True)
class CompileStats:
    """What train.compile has cost so far in this process (docs/performance.md)."""

    graphs: int                # graphs compiled (torch: Dynamo's; TensorFlow: XLA functions traced, one per shape)
    seconds: float             # wall time of the calls that compiled, their first run included
    notes: tuple[str, ...] = ()  # what runs eagerly instead, and why (one line each, printed once by rank 0)


SaveKind = Literal["checkpoint", "model"]
LoadKind = Literal["checkpoint", "init", "teacher"]


@runtime_checkable
class Backend(Protocol):
    """What the training loop needs from a framework."""

    name: str
    comm: Communicator

    def setup(self, threads_per_rank: int) -> Placement:
        """Starts Horovod (`comm.init()`), picks the device and sets CPU threads (0 = cores // local ranks)."""

    def framework_version(self) -> str: ...

    def build(self, spec: BuildSpec) -> int:
        """Builds model, optimizer and precision from `spec.seed`, with no collective; returns the number of
        trainable parameters. `sync` then makes the state identical on all ranks."""

    def sync(self) -> None:
        """Every rank takes rank 0's model, optimizer and loss-scale state (broadcasts)."""

    def train_step(self, batches: Sequence[Batch], lr: float) -> StepResult:
        """One optimizer step at learning rate `lr` over a window of micro-batches (x, y), following
        `spec.step`: gradients averaged over the window locally, then over all ranks in one reduction;
        precision, loss scaling, clipping and compression as given. Returns the window's loss sum and outputs."""

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepResult: ...

    def state(self) -> Any:
        """An in-memory copy of model, optimizer and loss-scale state (an elastic commit)."""

    def load_state(self, state: Any) -> None:
        """Returns to a `state` copy (an elastic rollback)."""

    def save(self, directory: Path, kind: SaveKind) -> list[str]:
        """Writes into `directory` (rank 0 calls it): "checkpoint", the whole training state in the framework's
        format; "model", the final model (model.pt / model.keras). Returns the file names written."""

    def load(self, source: Path, kind: LoadKind, skip_mismatched: bool = False) -> list[str]:
        """Reads what `save` wrote (rank 0 calls it, then `sync`): "checkpoint", a checkpoint directory's whole
        state; "init" (train.init_from) or "teacher" (distill.teacher), model weights only, from a checkpoint
        directory or a final model file. Returns the parameters left freshly initialised because their shapes
        differ (only with `skip_mismatched`)."""

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of the model's parameters and buffers by name, as numpy arrays."""

    def step_info(self) -> StepInfo: ...

    def reset(self) -> None:
        """After an elastic reset (`comm.reset()`): rebuilds whatever is bound to the old world."""


# --- optional capabilities ---------------------------------------------------------------------------------
@runtime_checkable
class BatchNormStatistics(Protocol):
    """Models with BatchNorm layers: running statistics that every rank must agree on (docs/batchnorm.md)."""

    def sync_batchnorm_statistics(self, mode: str) -> int:
        """Makes every BatchNorm layer's running statistics identical on every rank (a collective): "average"
        over the ranks or "rank0"'s. Returns the number of layers (0: nothing to do)."""


@runtime_checkable
class Inference(Protocol):
    """What the commands after training need (evaluate, predict, export, convert): the model's outputs."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's logits (float32, (n, classes)) for a batch (uint8 or float32 NHWC), in inference mode."""


@runtime_checkable
class Generation(Protocol):
    """Language models (model.name=gpt): next-token logits with a key/value cache (hvdtrain/lifecycle/generate.py)."""

    def next_token_logits(self, tokens: np.ndarray, cache: Any | None) -> tuple[np.ndarray, Any]:
        """float32 (n, vocabulary) logits of the token after `tokens` (n, t) int: without a cache `tokens` is the
        whole context; with one, the tokens that follow those it holds. Returns the cache with `tokens` in it."""


def require_inference(backend: Backend) -> Inference:
    """The backend as an Inference (both built-in backends are)."""
    if not isinstance(backend, Inference):
        raise TypeError(f"backend {backend.name} cannot predict")
    return backend


@dataclass(frozen=True)
class PrunableWeight:
    """A conv or dense kernel (a copy) and the axis that indexes its output channels or units."""

    values: np.ndarray
    out_axis: int


@runtime_checkable
class Prunable(Protocol):
    """Magnitude pruning (hvdtrain/features/pruning.py)."""

    def prunable(self) -> dict[str, PrunableWeight]:
        """Conv and dense kernels in model order, by name."""

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Multiplies those kernels by their masks now and after every optimizer step."""


@runtime_checkable
class Penalized(Protocol):
    """regularization.l1/l2 penalties."""

    def regularization_penalty(self) -> float:
        """The current value of the penalty added to the training loss."""


def require_prunable(backend: Backend, key: str = "prune.method") -> Prunable:
    """`backend` as a `Prunable`, or a one-line error naming the option that needs it."""
    if not isinstance(backend, Prunable):
        raise ConfigError(f"{key}: backend {backend.name} cannot prune: set {key}=none")
    return backend


def augment_kernel_module(name: str) -> str:
    """The module holding the named backend's augmentation kernel (`apply_transforms`)."""
    return BACKENDS[name].module("augment")


def get_augment_kernel(name: str) -> Any:
    """The named backend's `apply_transforms(images, params, config)`; imports only that framework."""
    return importlib.import_module(augment_kernel_module(name)).apply_transforms


def get_backend(name: str) -> Backend:
    """Imports and instantiates the named backend; only that framework gets imported."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}': choose one of {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].module("backend"), BACKENDS[name].backend_class
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"backend '{name}' cannot be loaded ({exc}): run `make setup` (scripts/setup_env.sh) "
                        "or `python -m hvdtrain doctor` to see what is missing") from None
    backend: Backend = getattr(module, cls_name)()
    return backend
