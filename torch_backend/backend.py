"""The PyTorch backend: horovod.torch's DistributedOptimizer around a plain PyTorch model."""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import horovod.torch as hvd
import numpy as np
import torch
import torch.nn.functional as F

from hvdtrain.backend import (
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
    StepPolicy,
    StepResult,
)
from hvdtrain.compile_meter import CompileMeter
from hvdtrain.config import OptimConfig
from hvdtrain.distributed.communicator import Communicator
from hvdtrain.distributed.environment import gpu_for_rank, no_gpu_support_error, threads_for_rank
from hvdtrain.errors import ConfigError
from hvdtrain.features.finetune import decays, frozen, lr_multipliers
from hvdtrain.files import write_atomic
from torch_backend.augment import augment_on_device
from torch_backend.batchnorm import sync_statistics, with_sync_batchnorm
from torch_backend.losses import distillation_loss, per_sample_loss, token_losses, window_summary
from torch_backend.models import build_model
from torch_backend.precision import Precision, make_precision

CHECKPOINT_FILE, MODEL_FILE = "state.pt", "model.pt"


def make_optimizer(cfg: OptimConfig, params: Any) -> torch.optim.Optimizer:
    """The optimizer named by `optim.name` with the documented hyper-parameter meanings."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def param_groups(named: Sequence[tuple[str, torch.Tensor]], optim: OptimConfig) -> list[dict[str, Any]]:
    """torch parameter groups, one per (LR multiplier of optim.param_groups, decayed or not by
    optim.weight_decay_on): torch keeps both per group; `lr_mult` is applied by train_step."""
    multipliers = lr_multipliers((n for n, _ in named), optim.param_groups)
    keys = {n: (multipliers[n], decays(tuple(p.shape), optim.weight_decay_on)) for n, p in named}
    return [{"params": [p for n, p in named if keys[n] == key], "lr_mult": key[0],
             "weight_decay": optim.weight_decay if key[1] else 0.0} for key in dict.fromkeys(keys.values())]


def distributed_optimizer(optimizer: torch.optim.Optimizer, named_parameters: Sequence[tuple[str, torch.Tensor]],
                          policy: StepPolicy) -> Any:
    """Horovod: gradients are allreduced once per window of `backward_passes_per_step` backward passes (Horovod
    sums them locally; train_step divides the loss by the window to average instead). The wrapper is a new
    optimizer over the same parameters: any state must be loaded into it, not before. Frozen parameters are
    left out, so Horovod neither hooks nor reduces them."""
    return hvd.DistributedOptimizer(
        optimizer, named_parameters=named_parameters,
        op=hvd.Adasum if policy.reduce_op == "adasum" else hvd.Average,
        compression=hvd.Compression.fp16 if policy.compression == "fp16" else hvd.Compression.none,
        backward_passes_per_step=policy.accumulation_steps)


class TorchBackend(Backend, Prunable, Penalized):
    """Backend for PyTorch (the protocol: hvdtrain.backend.Backend, Prunable, Penalized)."""

    name = "torch"

    def __init__(self) -> None:
        self.comm = Communicator(hvd, as_tensor=torch.as_tensor)
        self.device = torch.device("cpu")
        self.threads = 1
        self.spec: BuildSpec | None = None
        self.model: torch.nn.Module | None = None
        self.teacher: torch.nn.Module | None = None
        self.optimizer: Any = None  # Horovod's DistributedOptimizer (the plain one without StepPolicy.allreduce)
        self.precision: Precision | None = None
        self._masks: dict[str, torch.Tensor] = {}
        self._comm_seconds = 0.0
        self._compiled: Any = None  # train.compile: torch.compile's wrapper of self.model (same parameters)
        self._meter: CompileMeter | None = None
        self._breaks_before = 0

    def setup(self, threads_per_rank: int) -> Placement:
        world = self.comm.init()
        self.threads = threads_for_rank(threads_per_rank, world.local_size)
        if torch.get_num_threads() != self.threads:
            # Only when it changes: setting torch's own count again (2 of 2 cores) made the language-model recipe's
            # steps 5-7% slower on a 2-core AMD EPYC (interleaved runs of the hand-written loop with and without it).
            torch.set_num_threads(self.threads)
        if torch.cuda.is_available():
            if not hvd.cuda_built():
                raise no_gpu_support_error("torch")
            # Horovod: one GPU per local rank.
            gpu = gpu_for_rank(world.local_rank, world.local_size, torch.cuda.device_count())
            torch.cuda.set_device(gpu)
            self.device = torch.device("cuda", gpu)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest convolutions
        return Placement(device=str(self.device), threads=self.threads)

    def framework_version(self) -> str:
        return f"torch {torch.__version__}"

    def reset(self) -> None:
        pass  # nothing here is bound to the world: the DistributedOptimizer asks Horovod at every step

    def build(self, spec: BuildSpec) -> int:
        torch.manual_seed(spec.seed)
        self.spec = spec
        self._per_sample = per_sample_loss(spec.task.loss)
        model = build_model(spec.model, spec.image_shape, spec.num_classes, tokens=spec.task.sequences,
                            seed=spec.seed).to(self.device)
        if spec.model.sync_batchnorm:
            model = with_sync_batchnorm(model)
        if self.device.type == "cuda":  # NHWC memory: what the batches are, and what tensor cores want
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing in torch's stub
        if spec.teacher is not None:  # its weights come from load(..., "teacher") on rank 0, then sync
            self.teacher = build_model(spec.teacher, spec.image_shape, spec.num_classes).to(self.device).eval()
            self.teacher.requires_grad_(False)
        fixed = frozen((n for n, _ in model.named_parameters()), spec.freeze)
        trainable = [(n, p) for n, p in model.named_parameters() if n not in fixed]
        for name, param in model.named_parameters():
            param.requires_grad_(name not in fixed)
        optimizer = make_optimizer(spec.optim, param_groups(trainable, spec.optim))
        self.optimizer = distributed_optimizer(optimizer, trainable, spec.step) if spec.step.allreduce else optimizer
        self.precision = make_precision(self.device.type, spec.step)
        self.model = model
        if spec.compile:
            self._compile(model, spec)
        return sum(p.numel() for p in model.parameters())

    def _compile(self, model: torch.nn.Module, spec: BuildSpec) -> None:
        """train.compile: the model's forward (and so its backward) through torch.compile. self.model stays the
        plain module, so state dicts, checkpoints and exports are the eager ones. Shapes are specialised
        (dynamic=False): one graph per batch shape and mode (training and evaluation batches, the last smaller
        ones), each compiled once, in the first epoch."""
        import torch._dynamo.utils as dynamo_utils

        self._meter = meter = CompileMeter(lambda: int(dynamo_utils.counters["stats"]["unique_graphs"]))
        self._breaks_before = sum(dynamo_utils.counters["graph_break"].values())  # an earlier run's, in-process
        if spec.model.sync_batchnorm:
            meter.note("train.compile: model.sync_batchnorm allreduces inside the forward pass, which torch.compile "
                       "cannot hold: the model runs eagerly (the rest of the step is unchanged)")
            return
        self._compiled = torch.compile(model, mode=None if spec.compile_mode == "default" else spec.compile_mode,
                                       dynamic=False)

    def _metered(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)`, its compiling counted and timed when train.compile is on."""
        if self._meter is None:
            return fn(*args)
        graphs = self._meter.graphs
        result = self._meter.call(fn, *args)
        if self._meter.graphs != graphs:  # Dynamo meets graph breaks while it compiles
            self._graph_breaks()
        return result

    def _graph_breaks(self) -> None:
        """One note for the graph breaks Dynamo met (a user model's Python it cannot trace): those parts run
        eagerly."""
        import torch._dynamo.utils as dynamo_utils

        assert self._meter is not None
        breaks = dynamo_utils.counters["graph_break"]
        count = sum(breaks.values()) - self._breaks_before
        if count > 0 and not any(n.startswith("train.compile: graph break") for n in self._meter.notes):
            reason = list(breaks)[-1].splitlines()[0][:160]  # the newest reason: this run's
            self._meter.note(f"train.compile: graph breaks in the model ({count}, e.g. {reason}): those parts run "
                             "eagerly, the rest compiled")

    def _parts(self) -> tuple[BuildSpec, torch.nn.Module, Any, Precision]:
        spec, model, optimizer, precision = self.spec, self.model, self.optimizer, self.precision
        assert spec is not None and model is not None and optimizer is not None and precision is not None, \
            "build() first"
        return spec, model, optimizer, precision

    def framework_model(self) -> torch.nn.Module:
        """The built model itself, on its device (export writes it in torch's and ONNX's formats)."""
        return self._parts()[1]

    # --- state -------------------------------------------------------------------------------------------
    def _live_state(self) -> dict[str, Any]:
        _, model, optimizer, precision = self._parts()
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": precision.state_dict()}

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self._live_state())

    def load_state(self, state: dict[str, Any]) -> None:
        # A copy: the optimizer may keep the loaded tensors as its state and update them in place.
        self._assign_state(copy.deepcopy(state))

    def _assign_state(self, state: dict[str, Any]) -> None:
        _, model, optimizer, precision = self._parts()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        precision.load_state_dict(state["scaler"])

    def sync(self) -> None:
        # Horovod: every rank takes rank 0's weights, optimizer and loss-scaler state. The optimizer state
        # goes through broadcast_object rather than hvd.broadcast_optimizer_state, which initialises an empty
        # state by taking an optimizer step with zero gradients (that step applies weight decay and advances
        # Adam's step count).
        _, model, optimizer, precision = self._parts()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        if self.teacher is not None:
            hvd.broadcast_parameters({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}, root_rank=0)
        optimizer.load_state_dict(self.comm.broadcast_object(optimizer.state_dict(), "hvdtrain.optimizer"))
        precision.load_state_dict(self.comm.broadcast_object(precision.state_dict(), "hvdtrain.scaler"))

    def save(self, directory: Path, kind: SaveKind) -> list[str]:
        _, model, _, _ = self._parts()
        buf = io.BytesIO()
        name = CHECKPOINT_FILE if kind == "checkpoint" else MODEL_FILE
        torch.save(self._live_state() if kind == "checkpoint" else model.state_dict(), buf)
        write_atomic(directory / name, buf.getvalue())
        return [name]

    def load(self, source: Path, kind: LoadKind, skip_mismatched: bool = False) -> list[str]:
        _, model, _, _ = self._parts()
        if kind == "checkpoint":
            self._assign_state(torch.load(source / CHECKPOINT_FILE, map_location=self.device, weights_only=True))
            return []
        target = model if kind == "init" else self.teacher
        assert target is not None, "build() with a teacher first"
        key = "train.init_from" if kind == "init" else "distill.teacher"
        return self._load_weights(target, source, skip_mismatched, key)

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

    def weights(self) -> dict[str, np.ndarray]:
        _, model, _, _ = self._parts()
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    # --- steps -------------------------------------------------------------------------------------------
    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device: copied from pinned host memory without blocking when training on a GPU, and
        uint8 pixels scaled to [0, 1] there; with augment.device=gpu, transformed there. NHWC numpy -> NCHW view
        (channels_last memory), which conv layers take without a copy."""
        cuda = self.device.type == "cuda"
        x, y = (torch.from_numpy(a) for a in batch[:2])
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        images, labels = x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)
        if images.dtype == torch.uint8:  # pixels stay 8-bit until here: a quarter of the copy
            images = images.float().div_(255)
        if len(batch) == 3:
            assert self.spec is not None and self.spec.augment is not None, "build() with augment.device=gpu"
            images = augment_on_device(images, batch[2], self.spec.augment)
        # Images (n, H, W, C) go to NCHW; feature vectors (n, F) as they are.
        return (images.permute(0, 3, 1, 2) if images.ndim == 4 else images), labels

    def _forward(self, images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        _, _, _, precision = self._parts()
        call = self._compiled if model is self.model and self._compiled is not None else model
        with precision.forward_context():
            logits: torch.Tensor = call(images)
            return logits.float()  # the loss in fp32 whatever the compute precision

    def _penalty(self) -> torch.Tensor | None:
        """regularization.l1/l2 over the kernels (parameters with ndim > 1), or None."""
        spec, model, _, _ = self._parts()
        l1, l2 = spec.regularization.l1, spec.regularization.l2
        if not (l1 or l2):
            return None
        total = torch.zeros((), device=self.device)
        for p in model.parameters():
            if p.ndim > 1 and p.requires_grad:
                total = total + (l1 * p.abs().sum() if l1 else 0) + (l2 * p.square().sum() if l2 else 0)
        return total

    def _loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean loss and its outputs for the metrics (the logits; language_model: the window
        summaries)."""
        spec, _, _, _ = self._parts()
        if spec.task.sequences:
            if spec.task.loss != "cross_entropy":
                loss = self._per_sample(logits, labels).mean()
                return loss, window_summary(logits, labels)
            if spec.regularization.label_smoothing:
                loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                       label_smoothing=spec.regularization.label_smoothing)
                return loss, window_summary(logits, labels)
            losses = token_losses(logits, labels)  # every window has t positions: the token mean is the window mean
            return losses.mean(), window_summary(logits, labels, losses)
        return self._class_loss(logits, images, labels), logits.detach()

    def _class_loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        spec, _, _, _ = self._parts()
        smoothing = spec.regularization.label_smoothing
        if self.teacher is None:
            if spec.task.loss == "cross_entropy":  # the fused mean, with label smoothing
                return F.cross_entropy(logits, labels, label_smoothing=smoothing)
            return self._per_sample(logits, labels).mean()
        with torch.no_grad():  # the teacher sees the same (augmented) batch, in eval mode, without gradients
            teacher_logits = self._forward(images, self.teacher)
        return distillation_loss(logits, teacher_logits, labels, spec.distill.temperature, spec.distill.alpha,
                                 smoothing)

    def train_step(self, batches: Sequence[Batch], lr: float) -> StepResult:
        result: StepResult = self._metered(self._train_step, batches, lr)
        return result

    def _train_step(self, batches: Sequence[Batch], lr: float) -> StepResult:
        spec, model, optimizer, precision = self._parts()
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        model.train()
        optimizer.zero_grad()  # Horovod's override takes no arguments
        # The window's sums stay on the device: one host synchronisation per step, not per micro-batch.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        outputs: list[torch.Tensor] = []
        count = 0
        for batch in batches:
            images, labels = self._tensors(batch)
            logits = self._forward(images, model)
            loss, batch_outputs = self._loss(logits, images, labels)
            penalty = self._penalty()
            objective = loss if penalty is None else loss + penalty
            precision.backward(objective / len(batches))  # the window's mean gradient, not Horovod's sum
            loss_sum += loss.detach().double() * len(labels)
            outputs.append(batch_outputs)
            count += len(labels)
        if spec.step.reduce_op == "adasum":
            # Horovod's Adasum optimizer reduces inside step() and cannot skip synchronisation (the policy
            # refuses loss scaling and clipping with it): the whole step counts as communication.
            start = time.perf_counter()
            optimizer.step()
            self._comm_seconds = time.perf_counter() - start
        else:
            self._comm_seconds = precision.optimizer_step(optimizer, model.parameters(), spec.step.grad_clip_norm)
        self._apply_masks()  # pruned weights stay exactly zero whatever the optimizer did
        return StepResult(float(loss_sum), count, torch.cat(outputs).cpu().numpy())

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        result: StepResult = self._metered(self._eval_step, x, y)
        return result

    @torch.no_grad()
    def _eval_step(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        spec, model, _, _ = self._parts()
        images, labels = self._tensors((x, y))
        model.eval()
        logits = self._forward(images, model)
        if spec.task.sequences:
            summary = window_summary(logits, labels)
            loss = summary[:, 0].double().sum() if spec.task.loss == "cross_entropy" else \
                self._per_sample(logits, labels).sum()
            return StepResult(loss.item(), len(labels), summary.cpu().numpy())
        loss = (F.cross_entropy(logits, labels, reduction="sum") if spec.task.loss == "cross_entropy" else
                self._per_sample(logits, labels).sum())
        return StepResult(loss.item(), len(labels), logits.cpu().numpy())

    @torch.no_grad()
    def sync_batchnorm_statistics(self, mode: str) -> int:
        return sync_statistics(self._parts()[1], mode)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        _, model, _, _ = self._parts()
        images, _ = self._tensors((x, np.zeros(len(x), dtype=np.int64)))
        model.eval()
        return self._forward(images, model).cpu().numpy()

    @torch.inference_mode()  # no autograd bookkeeping at all: generation never trains
    def next_token_logits(self, tokens: np.ndarray, cache: Any | None) -> tuple[np.ndarray, Any]:
        _, model, _, precision = self._parts()
        if cache is None:  # a new context; not per token: eval() walks every module (a sixth of a cached step)
            model.eval()
        with precision.forward_context():
            decode: Any = model.decode  # torch_backend/gpt.py's GPT (generate checks model.name)
            logits, cache = decode(torch.from_numpy(np.asarray(tokens, np.int64)).to(self.device), cache)
        return logits.float().cpu().numpy(), cache

    def step_info(self) -> StepInfo:
        _, _, optimizer, precision = self._parts()
        group = optimizer.param_groups[0]
        lr = float(group["lr"] / group["lr_mult"]) if group["lr_mult"] else float("nan")
        return StepInfo(lr=lr, loss_scale=precision.loss_scale(), comm_seconds=self._comm_seconds,
                        compiled=None if self._meter is None else self._meter.stats())

    # --- optional capabilities ---------------------------------------------------------------------------
    def prunable(self) -> dict[str, PrunableWeight]:
        _, model, _, _ = self._parts()
        layers = (torch.nn.Conv2d, torch.nn.Linear)
        return {f"{name}.weight": PrunableWeight(module.weight.detach().cpu().numpy().copy(), 0)  # (out, in, ...)
                for name, module in model.named_modules() if isinstance(module, layers)}

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        self._masks = {name: torch.as_tensor(mask, device=self.device) for name, mask in masks.items()}
        self._apply_masks()

    @torch.no_grad()
    def _apply_masks(self) -> None:
        if self._masks:
            params = dict(self._parts()[1].named_parameters())
            for name, mask in self._masks.items():
                params[name].mul_(mask)

    def regularization_penalty(self) -> float:
        penalty = self._penalty()
        return 0.0 if penalty is None else float(penalty)
