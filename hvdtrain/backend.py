"""The small interface every framework backend implements, and a registry that imports one lazily."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hvdtrain.errors import UserError

if TYPE_CHECKING:
    from hvdtrain.config import Config


@dataclass(frozen=True)
class World:
    """Where this process sits in the Horovod job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    controller: str  # "gloo" or "mpi"
    device: str      # e.g. "cpu" or "cuda:0"
    threads: int     # CPU threads this rank uses

    @classmethod
    def from_horovod(cls, hvd: Any, device: str, threads: int) -> World:
        """Reads rank and sizes from an initialised Horovod module (torch's and TF's share this API)."""
        return cls(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), local_size=hvd.local_size(),
                   controller="mpi" if hvd.mpi_enabled() else "gloo", device=device, threads=threads)


@dataclass(frozen=True)
class StepStats:
    """Sums over one batch, so that batches and ranks combine exactly."""

    loss_sum: float
    correct: float
    count: int

    def as_array(self) -> np.ndarray:
        return np.array([self.loss_sum, self.correct, self.count], dtype=np.float64)


class Backend(Protocol):
    """What the training loop needs from a framework. Batches are NHWC float32 numpy arrays."""

    name: str
    hvd: Any  # the framework's Horovod module (horovod.torch / horovod.tensorflow: shared basics API)
    # Seconds the last train_step spent on the gradient allreduce (hvdtrain/reporting/profile.py): torch, blocked in
    # synchronize() after the backward pass; TensorFlow, between timestamps around the allreduce op.
    last_comm_seconds: float

    def init(self, threads_per_rank: int) -> World:
        """Initialises Horovod, picks the device and sets CPU threads (0 = cores // local ranks)."""

    def world(self) -> World:
        """Where this process sits now (after an elastic reset, in the new world)."""

    def reset(self) -> None:
        """Elastic reset: re-initialises Horovod over the new world; anything bound to the old one is rebuilt."""

    def is_collective_failure(self, exc: BaseException) -> bool:
        """Whether `exc` is a failed collective (a peer died): elastic training then rolls back."""

    def framework_version(self) -> str: ...

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of a small float64 vector over all ranks."""

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order, on every rank."""

    def build(self, cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> int:
        """Builds model and optimizer (and loss scaler) from the seed, with no collective; returns
        #parameters. `sync_state` then makes the state identical on all ranks."""

    def sync_state(self) -> None:
        """Every rank takes rank 0's model, optimizer and loss-scaler state (broadcasts)."""

    def snapshot(self) -> Any:
        """An in-memory copy of model, optimizer and loss-scaler state (an elastic commit)."""

    def restore_snapshot(self, snapshot: Any) -> None:
        """Returns to a `snapshot` (an elastic rollback)."""

    def init_weights(self, source: Path, skip_mismatched: bool) -> list[str]:
        """Loads model weights only (train.init_from) from a checkpoint directory or a final model file;
        returns the parameters left freshly initialised because their shapes differ (`skip_mismatched`)."""

    def load_teacher(self, source: Path) -> None:
        """Loads the distillation teacher's weights (built by `build` from distill.teacher's config)."""

    def regularization_penalty(self) -> float:
        """The current value of the regularization.l1/l2 penalty."""

    def prunable(self) -> dict[str, Any]:
        """Conv and dense kernels in model order as `hvdtrain.features.pruning.Kernel`s (copies)."""

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Multiplies those kernels by their masks now and after every optimizer step."""

    def load_checkpoint(self, directory: Path) -> None:
        """Loads the state `save_checkpoint` wrote into `directory` (rank 0 calls it, then `sync_state`)."""

    def save_checkpoint(self, directory: Path) -> list[str]:
        """Writes model, optimizer and loss-scaler state in the framework's format; returns the file names."""

    def train_step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> StepStats:
        """One optimizer step at learning rate `lr` over a window of micro-batches (x, y), following
        `cfg.policy`: gradients averaged over the window locally, then over all ranks in one reduction;
        precision, loss scaling, clipping and compression as configured. Returns the window's sums."""

    def current_lr(self) -> float:
        """The learning rate the optimizer holds now (read back from it)."""

    def loss_scale(self) -> float | None:
        """The current dynamic loss scale (fp16), else None."""

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepStats: ...

    def weights(self) -> dict[str, np.ndarray]:
        """A copy of the model's parameters and buffers by name, as numpy arrays."""

    def save_model(self, directory: Path) -> Path:
        """Writes the model in the framework's native format (rank 0 calls this); returns the file."""

    def shutdown(self) -> None: ...


_REGISTRY = {
    "torch": "torch_backend.backend:TorchBackend",
    "tensorflow": "tf_backend.backend:TensorFlowBackend",
}


_AUGMENT_KERNELS = {"torch": "torch_backend.augment", "tensorflow": "tf_backend.augment"}


def get_augment_kernel(name: str) -> Any:
    """The named backend's `apply_transforms(images, params, config)`; imports only that framework."""
    return importlib.import_module(_AUGMENT_KERNELS[name]).apply_transforms


def get_backend(name: str) -> Backend:
    """Imports and instantiates the named backend; only that framework gets imported."""
    if name not in _REGISTRY:
        raise UserError(f"unknown backend '{name}': choose one of {', '.join(_REGISTRY)}")
    module_name, _, cls_name = _REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"backend '{name}' cannot be loaded ({exc}): run `make setup` (scripts/setup_env.sh) "
                        "or `python -m hvdtrain doctor` to see what is missing") from None
    return getattr(module, cls_name)()
