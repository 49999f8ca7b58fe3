"""What the loop derives from the config before it steps: the backend's build spec (once per run), and the
plan for the current world (again after every elastic reset): policy, steps per epoch, LR schedule, pruning
schedule. Pure functions: no collective, no file."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hvdtrain.backend import BuildSpec, Placement, StepPolicy
from hvdtrain.config import AugmentConfig, Config
from hvdtrain.data import plan_epoch
from hvdtrain.distributed.communicator import World
from hvdtrain.errors import ConfigError
from hvdtrain.features.pruning import Pruner
from hvdtrain.training.policy import ResolvedPolicy, resolve_policy
from hvdtrain.training.schedule import LRSchedule
from hvdtrain.training.weight_sources import teacher_model_config


def augment_on_device(cfg: AugmentConfig, placement: Placement) -> bool:
    """Whether the random transforms run inside the training step, on the rank's GPU (augment.device)."""
    on_gpu = placement.device != "cpu"
    if cfg.device == "gpu" and not on_gpu:
        raise ConfigError("augment.device=gpu, but this rank trains on the CPU (no GPU visible): set "
                          "augment.device=auto or cpu")
    return cfg.random and (cfg.device == "gpu" or (cfg.device == "auto" and on_gpu))


def build_spec(cfg: Config, image_shape: tuple[int, ...], num_classes: int,
               augment_in_step: bool = False, allreduce: bool = True) -> BuildSpec:
    """The part of the config a backend needs to build model, optimizer and step (`augment_in_step`: the step
    applies the random transforms, augment.device=gpu; `allreduce`: StepPolicy.allreduce). `image_shape`:
    (H, W, C), or (F,) for feature vectors."""
    if cfg.task == "language_model":
        check_token_windows(cfg)
    elif len(image_shape) == 1:
        check_feature_vectors(cfg, image_shape[0])
    return BuildSpec(model=cfg.model, image_shape=image_shape, num_classes=num_classes, seed=cfg.seed,
                     optim=cfg.optim, step=StepPolicy.from_config(cfg.policy, allreduce),
                     regularization=cfg.regularization, freeze=cfg.train.freeze, distill=cfg.distill,
                     teacher=teacher_model_config(cfg) if cfg.distill.teacher else None,
                     augment=cfg.augment if augment_in_step else None, task=cfg.task_spec(),
                     compile=cfg.train.compile, compile_mode=cfg.train.compile_mode)


def check_feature_vectors(cfg: Config, features: int) -> None:
    """Feature vectors (F,) go to the mlp or the user's model, without image augmentation."""
    if cfg.model.name != "mlp" and not cfg.model.is_import_path(cfg.model.name):
        raise ConfigError(f"model.name={cfg.model.name} takes images, but data.name={cfg.data.name} gives feature "
                          f"vectors of {features} values: set model.name=mlp (or your own model)")
    if cfg.augment.random or cfg.augment.standardizes:
        raise ConfigError(f"augment.* transforms images, but data.name={cfg.data.name} gives feature vectors: leave "
                          "the augment section at its defaults (standardise features when you make the data)")


def check_token_windows(cfg: Config) -> None:
    """Token windows go to a sequence model (config.py checks which), without image augmentation."""
    if cfg.augment.random or cfg.augment.standardizes:
        raise ConfigError("augment.* transforms images, but task=language_model trains on token windows: leave the "
                          "augment section at its defaults")


@dataclass(frozen=True)
class RunPlan:
    """The run on the current world."""

    world: World
    policy: ResolvedPolicy
    steps_per_epoch: int
    epochs: int  # train.epochs, or as many as train.max_steps needs (the last one cut at that step)
    schedule: LRSchedule
    pruner: Pruner

    def epoch_steps_cap(self, cfg: Config, steps_before_epoch: int) -> int | None:
        """The most optimizer steps the epoch that starts after `steps_before_epoch` may take (null: a pass)."""
        cap = cfg.train.max_steps_per_epoch
        if cfg.train.max_steps is not None:
            left = cfg.train.max_steps - steps_before_epoch
            cap = left if cap is None else min(cap, left)
        return cap


def plan_run(cfg: Config, world: World, train_samples: int, nccl_built: bool) -> RunPlan:
    """Checks the policy against `world` and derives the run's numbers on it."""
    policy = resolve_policy(cfg, world, nccl_built=nccl_built)
    steps_per_epoch = plan_epoch(train_samples, rank=world.rank, world_size=world.size,
                                 batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=0,
                                 max_steps=cfg.train.max_steps_per_epoch,
                                 accumulation_steps=cfg.policy.accumulation_steps).steps
    max_steps = cfg.train.max_steps
    epochs = cfg.train.epochs if max_steps is None else math.ceil(max_steps / steps_per_epoch)
    schedule = LRSchedule.from_config(cfg.optim, policy.scaled_lr, cfg.policy.warmup_epochs, steps_per_epoch,
                                      epochs, warmup_steps=cfg.policy.warmup_steps, total_steps=max_steps)
    return RunPlan(world=world, policy=policy, steps_per_epoch=steps_per_epoch, epochs=epochs, schedule=schedule,
                   pruner=Pruner(cfg, steps_per_epoch, epochs))
