"""The PyTorch backend: horovod.torch's DistributedOptimizer around a plain PyTorch model."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import numpy as np
import torch
import torch.nn.functional as F

from hvdtrain.backend import StepStats, World
from hvdtrain.config import Config, DistillConfig, OptimConfig, PolicyConfig, RegularizationConfig
from hvdtrain.distributed.environment import threads_for_rank
from hvdtrain.errors import ConfigError
from hvdtrain.features.finetune import frozen, lr_multipliers, teacher_model_config
from hvdtrain.files import write_atomic
from hvdtrain.features.pruning import Kernel
from torch_backend.losses import distillation_loss
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
        self.teacher: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.policy = PolicyConfig()
        self.reg = RegularizationConfig()
        self.distill = DistillConfig()
        self.autocast_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.threads = 1
        self._masks: dict[str, torch.Tensor] = {}
        self.last_comm_seconds = 0.0

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
        self.reg, self.distill = cfg.regularization, cfg.distill
        if cfg.distill.teacher:  # its weights come in load_teacher (rank 0), then sync_state
            self.teacher = build_model(teacher_model_config(cfg), image_shape, num_classes).to(self.device).eval()
            self.teacher.requires_grad_(False)
        fixed = frozen((n for n, _ in model.named_parameters()), cfg.train.freeze)
        trainable = [(n, p) for n, p in model.named_parameters() if n not in fixed]
        for name, param in model.named_parameters():
            param.requires_grad_(name not in fixed)
        multipliers = lr_multipliers((n for n, _ in trainable), cfg.optim.param_groups)
        groups = [{"params": [p for n, p in trainable if multipliers[n] == m], "lr_mult": m}
                  for m in dict.fromkeys(multipliers[n] for n, _ in trainable)]
        # Horovod: gradients are allreduced once per window of `backward_passes_per_step` backward passes
        # (Horovod sums them locally; train_step divides the loss by the window to average instead). The
        # wrapper is a new optimizer over the same parameters: any state must be loaded into it, not before.
        # Frozen parameters are left out, so Horovod neither hooks nor reduces them.
        optimizer = hvd.DistributedOptimizer(
            make_optimizer(cfg.optim, groups), named_parameters=trainable,
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
        if self.teacher is not None:
            hvd.broadcast_parameters({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}, root_rank=0)
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

    def _load_weights(self, model: torch.nn.Module, source: Path, skip_mismatched: bool, key: str) -> list[str]:
        """Weights from a checkpoint directory or a final model.pt into `model`; returns the names left at their
        fresh initialisation because their shapes differ (only with `skip_mismatched`)."""
        loaded = torch.load(source / CHECKPOINT_FILE if source.is_dir() else source, map_location=self.device,
                            weights_only=True)
        state = loaded["model"] if source.is_dir() else loaded
        own = model.state_dict()
        if set(state) != set(own):
            different = sorted(set(state) ^ set(own))[:4]
            raise ConfigError(f"{key}: '{source}' holds another architecture (parameters differ: "
                              f"{', '.join(different)}): use a model of the same model.name")
        mismatched = [k for k in own if state[k].shape != own[k].shape]
        if mismatched and not skip_mismatched:
            raise ConfigError(f"{key}: shapes differ for {', '.join(mismatched)}: set "
                              "train.init_skip_mismatched=true to keep those freshly initialised")
        model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
        return mismatched

    def init_weights(self, source: Path, skip_mismatched: bool) -> list[str]:
        assert self.model is not None, "build() first"
        return self._load_weights(self.model, source, skip_mismatched, "train.init_from")

    def load_teacher(self, source: Path) -> None:
        assert self.teacher is not None, "build() with distill.teacher first"
        self._load_weights(self.teacher, source, False, "distill.teacher")

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

    def _forward(self, images: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
        model = model or self.model
        assert model is not None, "build() first"
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            return model(images).float()  # the loss in fp32 whatever the compute precision

    def _penalty(self) -> torch.Tensor | None:
        """regularization.l1/l2 over the kernels (parameters with ndim > 1), or None."""
        assert self.model is not None, "build() first"
        l1, l2 = self.reg.l1, self.reg.l2
        if not (l1 or l2):
            return None
        kernels = [p for p in self.model.parameters() if p.ndim > 1 and p.requires_grad]
        total = torch.zeros((), device=self.device)
        for p in kernels:
            if l1:
                total = total + l1 * p.abs().sum()
            if l2:
                total = total + l2 * p.square().sum()
        return total

    def prunable(self) -> dict[str, Kernel]:
        assert self.model is not None, "build() first"
        layers = (torch.nn.Conv2d, torch.nn.Linear)
        return {f"{name}.weight": Kernel(module.weight.detach().cpu().numpy().copy(), 0)  # (out, in, ...)
                for name, module in self.model.named_modules() if isinstance(module, layers)}

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        self._masks = {name: torch.as_tensor(mask, device=self.device) for name, mask in masks.items()}
        self._apply_masks()

    @torch.no_grad()
    def _apply_masks(self) -> None:
        if self._masks:
            params = dict(self.model.named_parameters()) if self.model is not None else {}
            for name, mask in self._masks.items():
                params[name].mul_(mask)

    def regularization_penalty(self) -> float:
        penalty = self._penalty()
        return 0.0 if penalty is None else float(penalty)

    def train_step(self, batches: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> StepStats:
        assert self.model is not None and self.optimizer is not None, "build() first"
        optimizer, scaler, clip = self.optimizer, self.scaler, self.policy.grad_clip_norm
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        self.model.train()
        optimizer.zero_grad()  # Horovod's override takes no arguments
        loss_sum, correct, count = 0.0, 0, 0
        for x, y in batches:
            images, labels = self._tensors(x, y)
            logits = self._forward(images)
            if self.teacher is None:
                loss = F.cross_entropy(logits, labels, label_smoothing=self.reg.label_smoothing)
            else:  # the teacher sees the same (augmented) batch, in eval mode, without gradients
                with torch.no_grad():
                    teacher_logits = self._forward(images, self.teacher)
                loss = distillation_loss(logits, teacher_logits, labels, self.distill.temperature,
                                         self.distill.alpha, self.reg.label_smoothing)
            penalty = self._penalty()
            objective = loss if penalty is None else loss + penalty
            window_loss = objective / len(batches)  # the window's mean gradient, not Horovod's sum
            (scaler.scale(window_loss) if scaler is not None else window_loss).backward()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.detach().argmax(1) == labels).sum())
            count += len(labels)
        wait_start = time.perf_counter()
        if self.policy.reduce_op == "adasum":
            # Horovod's Adasum optimizer reduces inside step() and cannot skip synchronisation (the policy
            # refuses loss scaling and clipping with it): the whole step counts as communication.
            optimizer.step()
            self.last_comm_seconds = time.perf_counter() - wait_start
        elif scaler is None and clip is None:
            # Horovod: wait for the allreduces the backward passes started (timed: the exposed
            # communication), then step without a second synchronisation: what optimizer.step() does.
            optimizer.synchronize()
            self.last_comm_seconds = time.perf_counter() - wait_start
            with optimizer.skip_synchronize():
                optimizer.step()
        else:
            # Horovod's order for loss scaling and clipping: wait for the averaged gradients, unscale, clip,
            # step. The scaler skips the step if any gradient is inf/NaN; after the allreduce every rank sees
            # the same values, so all ranks skip alike.
            optimizer.synchronize()
            self.last_comm_seconds = time.perf_counter() - wait_start
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
        self._apply_masks()  # pruned weights stay exactly zero whatever the optimizer did
        return StepStats(loss_sum, correct, count)

    def current_lr(self) -> float:
        assert self.optimizer is not None, "build() first"
        group = self.optimizer.param_groups[0]
        return float(group["lr"] / group["lr_mult"]) if group["lr_mult"] else float("nan")

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
