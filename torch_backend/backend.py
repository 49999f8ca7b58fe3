"""The PyTorch backend: horovod.torch's DistributedOptimizer around a plain PyTorch model."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import numpy as np
import torch
import torch.nn.functional as F

from hvdtrain.backend import StepStats, World
from hvdtrain.config import Config, OptimConfig, PolicyConfig
from hvdtrain.environment import threads_for_rank
from hvdtrain.outputs import write_atomic
from torch_backend.models import build_model


def make_optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer named by `optim.name` with the documented hyper-parameter meanings."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


CHECKPOINT_FILE = "state.pt"


class TorchBackend:
    """Backend for PyTorch (see hvdtrain.backend.Backend)."""

    name = "torch"
    hvd = hvd

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.policy = PolicyConfig()
        self.autocast_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.threads = 1

    def init(self, threads_per_rank: int) -> World:
        hvd.init()  # Horovod: start the controller (Gloo under horovodrun, MPI under mpirun).
        self.threads = threads_for_rank(threads_per_rank, hvd.local_size())
        torch.set_num_threads(self.threads)
        if torch.cuda.is_available():
            torch.cuda.set_device(hvd.local_rank())  # Horovod: one GPU per local rank.
            self.device = torch.device("cuda", hvd.local_rank())
        return self.world()

    def world(self) -> World:
        return World.from_horovod(hvd, device=str(self.device), threads=self.threads)

    def reset(self) -> None:
        hvd.shutdown()
        hvd.init()

    def is_collective_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, hvd.HorovodInternalError)

    def framework_version(self) -> str:
        return f"torch {torch.__version__}"

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64))
        return hvd.allreduce(tensor, op=hvd.Sum, name="hvdtrain.metrics").numpy()

    def allgather_object(self, obj: Any) -> list[Any]:
        # A fixed name: Horovod names the collective after type(obj), and ranks holding different types
        # (None on one, a message on another) would then wait on different collectives forever.
        return hvd.allgather_object(obj, name="hvdtrain.object")

    def build(self, cfg: Config, image_shape: tuple[int, int, int], num_classes: int) -> int:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, image_shape, num_classes).to(self.device)
        policy = self.policy = cfg.policy
        # Horovod: gradients are allreduced once per window of `backward_passes_per_step` backward passes
        # (Horovod sums them locally; train_step divides the loss by the window to average instead). The
        # wrapper is a new optimizer over the same parameters: any state must be loaded into it, not before.
        optimizer = hvd.DistributedOptimizer(
            make_optimizer(cfg.optim, model.parameters()), named_parameters=model.named_parameters(),
            op=hvd.Adasum if policy.reduce_op == "adasum" else hvd.Average,
            compression=hvd.Compression.fp16 if policy.compression == "fp16" else hvd.Compression.none,
            backward_passes_per_step=policy.accumulation_steps)
        if policy.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type, init_scale=policy.loss_scale_init,
                                               growth_interval=policy.loss_scale_growth_interval)
        self.optimizer = optimizer
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(policy.precision)
        self.model = model
        return sum(p.numel() for p in model.parameters())

    def _state(self) -> dict[str, Any]:
        assert self.model is not None and self.optimizer is not None, "build() first"
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def _load_state(self, state: dict[str, Any]) -> None:
        assert self.model is not None and self.optimizer is not None, "build() first"
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def sync_state(self) -> None:
        # Horovod: every rank takes rank 0's weights, optimizer and loss-scaler state. The optimizer
        # state goes through broadcast_object rather than hvd.broadcast_optimizer_state, which initialises
        # an empty state by taking an optimizer step with zero gradients (that step applies weight decay
        # and advances Adam's step count).
        assert self.model is not None and self.optimizer is not None, "build() first"
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        self.optimizer.load_state_dict(hvd.broadcast_object(self.optimizer.state_dict(), root_rank=0,
                                                            name="hvdtrain.optimizer"))
        if self.scaler is not None:
            self.scaler.load_state_dict(hvd.broadcast_object(self.scaler.state_dict(), root_rank=0,
                                                             name="hvdtrain.scaler"))

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self._state())

    def restore_snapshot(self, snapshot: dict[str, Any]) -> None:
        # A copy: the optimizer may keep the loaded tensors as its state and update them in place.
        self._load_state(copy.deepcopy(snapshot))

    def load_checkpoint(self, directory: Path) -> None:
        self._load_state(torch.load(directory / CHECKPOINT_FILE, map_location=self.device, weights_only=True))

    def save_checkpoint(self, directory: Path) -> list[str]:
        import io

        buf = io.BytesIO()
        torch.save(self._state(), buf)
        write_atomic(directory / CHECKPOINT_FILE, buf.getvalue())
        return [CHECKPOINT_FILE]

    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # NHWC numpy -> NCHW view (channels_last memory), which conv layers take without a copy.
        images = torch.from_numpy(x).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        return images, torch.from_numpy(y).to(self.device, non_blocking=True)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "build() first"
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return self.model(images).float()  # the loss in fp32 whatever the compute precision

    def train_step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> StepStats:
        assert self.model is not None and self.optimizer is not None, "build() first"
        optimizer, scaler, clip = self.optimizer, self.scaler, self.policy.grad_clip_norm
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        optimizer.zero_grad()  # Horovod's override takes no arguments
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in batches:
            images, labels = self._tensors(x, y)
            logits = self._forward(images)
            loss = F.cross_entropy(logits, labels)
            window_loss = loss / len(batches)  # the window's mean gradient, not Horovod's sum
            (scaler.scale(window_loss) if scaler is not None else window_loss).backward()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.detach().argmax(1) == labels).sum())
            count += len(labels)
        if scaler is None and clip is None:
            optimizer.step()  # Horovod: waits for the allreduce the last backward pass started
        else:
            # Horovod's order for loss scaling and clipping: wait for the averaged gradients, unscale,
            # clip, then step without a second synchronisation. The scaler skips the step if any gradient
            # is inf/NaN; after the allreduce every rank sees the same values, so all ranks skip alike.
            optimizer.synchronize()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            with optimizer.skip_synchronize():
                if scaler is not None:
                    scaler.step(optimizer)
                else:
                    optimizer.step()
            if scaler is not None:
                scaler.update()
        return StepStats(loss_sum, correct, count)

    def current_lr(self) -> float:
        assert self.optimizer is not None, "build() first"
        return float(self.optimizer.param_groups[0]["lr"])

    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    @torch.no_grad()
    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepStats:
        assert self.model is not None, "build() first"
        images, labels = self._tensors(x, y)
        self.model.eval()
        logits = self._forward(images)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        return StepStats(loss.item(), (logits.argmax(1) == labels).sum().item(), len(labels))

    def weights(self) -> dict[str, np.ndarray]:
        assert self.model is not None, "build() first"
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def save_model(self, directory: Path) -> Path:
        import io

        assert self.model is not None, "build() first"
        buf = io.BytesIO()
        torch.save(self.model.state_dict(), buf)
        path = directory / "model.pt"
        write_atomic(path, buf.getvalue())
        return path

    def shutdown(self) -> None:
        hvd.shutdown()
