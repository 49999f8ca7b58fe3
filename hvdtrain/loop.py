"""The one training loop, written once for every backend: epochs, steps, evaluation, metrics, outputs."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain import __version__
from hvdtrain.augment.pipeline import AugmentPipeline, Transform
from hvdtrain.augment.standardize import featurewise_stats
from hvdtrain.backend import Backend, World, get_augment_kernel
from hvdtrain.checkpoint import Checkpoint, CheckpointError, Checkpointer, check_compatible, newest, read_checkpoint
from hvdtrain.config import Config, config_hash, flatten, to_dict, to_yaml
from hvdtrain.data import BatchLoader, Dataset, load_dataset, plan_epoch, shard_for_eval
from hvdtrain.environment import apply_horovod_settings
from hvdtrain.errors import ConfigError, UserError
from hvdtrain.outputs import RunOutputs
from hvdtrain.policy import ResolvedPolicy, resolve_policy
from hvdtrain.progress import Progress
from hvdtrain.schedule import LRSchedule


def train(cfg: Config, backend: Backend) -> dict[str, Any]:
    """Trains `cfg` on `backend` (Horovod already launched around us) and returns the run summary."""
    wall_start = time.perf_counter()
    horovod_env = apply_horovod_settings(cfg.horovod)
    world = backend.init(cfg.train.threads_per_rank)
    check_same_config(cfg, backend, world)
    policy = resolve_policy(cfg, world, nccl_built=bool(backend.hvd.nccl_built()))
    progress = Progress(cfg.run.progress, enabled=world.rank == 0)
    dataset = _agree(backend, lambda: load_dataset(cfg.data, cfg.seed))
    steps_per_epoch = plan_epoch(len(dataset.y_train), rank=world.rank, world_size=world.size,
                                 batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=0,
                                 max_steps=cfg.train.max_steps_per_epoch,
                                 accumulation_steps=cfg.policy.accumulation_steps).steps
    schedule = LRSchedule.from_config(cfg.optim, policy.scaled_lr, cfg.policy.warmup_epochs, steps_per_epoch,
                                      cfg.train.epochs)
    augment = _augment_pipeline(cfg, backend, world, dataset)
    dataset = replace(dataset, x_val=augment.eval_images(dataset.x_val))
    resume = _find_resume(cfg, backend, world)
    num_params = backend.build(cfg, dataset.image_shape, dataset.num_classes,
                               restore=resume.path if resume is not None and world.rank == 0 else None)
    outputs = RunOutputs(cfg.run_dir(), enabled=world.rank == 0)
    _agree(backend, lambda: outputs.start(to_yaml(cfg), history=resume.history if resume else None,
                                          resume_step=resume.step if resume else 0,
                                          overwrite=cfg.run.overwrite))
    checkpointer = Checkpointer(cfg, outputs.dir, enabled=world.rank == 0)
    timeline = _start_timeline(cfg, backend, outputs)

    progress.print(f"hvdtrain {__version__}: backend {backend.name} ({backend.framework_version()}), "
                   f"{world.size} rank(s) via {world.controller}, device {world.device}, "
                   f"{world.threads} thread(s)/rank; {cfg.model.name} with {num_params:,} parameters; "
                   f"{cfg.data.name}: {len(dataset.y_train)} train / {len(dataset.y_val)} val samples")
    progress.print("resolved config:\n  " + to_yaml(cfg).rstrip().replace("\n", "\n  "))
    progress.print(policy.describe())

    history: list[dict[str, Any]] = resume.history if resume else []
    total_steps = resume.step if resume else 0
    first_epoch = resume.epoch if resume else 0
    if resume is not None:
        checkpointer.restore_best(history)
        progress.print(f"resuming from {resume.path} (epoch {resume.epoch}, step {resume.step})")
    for epoch in range(first_epoch, cfg.train.epochs):
        record = _train_epoch(cfg, backend, world, dataset, epoch, progress,
                              augment.train_transform(cfg.seed, world.rank, epoch), schedule, total_steps,
                              outputs)
        record.update(_evaluate(cfg, backend, world, dataset))
        total_steps += record.pop("steps")
        history.append(record)
        outputs.log_epoch(record)
        progress.end_epoch(record)
        if checkpointer.due(epoch + 1):
            checkpointer.save(backend, epoch + 1, total_steps, history)
    if timeline is not None:
        backend.hvd.stop_timeline()

    # Every rank reports how many steps it really took: equal counts are what keeps collectives paired.
    steps_per_rank = backend.allgather_object(total_steps)
    outputs.save_weights(backend.weights())
    if world.rank == 0:
        backend.save_model(outputs.dir)
    summary = _summary(cfg, backend, world, policy, history, steps_per_rank, num_params,
                       time.perf_counter() - wall_start)
    summary["horovod_settings"] = horovod_env
    if timeline is not None:
        summary["timeline"] = str(timeline)
    if augment.stats is not None:
        summary["featurewise_mean"] = augment.stats.mean.tolist()
        summary["featurewise_std"] = augment.stats.std.tolist()
    outputs.finish(summary)
    best = summary["best"]
    progress.print(f"finished in {summary['wall_time_s']:.1f}s; best {best['metric']} "
                   f"{best[best['metric']]:.4f} at epoch {best['epoch']}; outputs in {outputs.dir}")
    return summary


def _augment_pipeline(cfg: Config, backend: Backend, world: World, dataset: Dataset) -> AugmentPipeline:
    aug = cfg.augment
    stats = None
    if aug.featurewise_center or aug.featurewise_std_normalization:
        stats = featurewise_stats(dataset.x_train, world.rank, world.size, aug.rescale, backend.allreduce_sum)
    return AugmentPipeline(aug, get_augment_kernel(cfg.backend) if aug.random else None, stats)


def _find_resume(cfg: Config, backend: Backend, world: World) -> Checkpoint | None:
    """The checkpoint to continue from (train.resume), as rank 0 finds it; every rank gets its manifest,
    so all ranks start from the same epoch and step (rank 0 alone reads the state files)."""
    if cfg.train.resume is None:
        return None

    def locate() -> Checkpoint | None:
        if world.rank != 0:
            return None
        run_dir = cfg.run_dir()
        found = newest(run_dir) if cfg.train.resume == "auto" else read_checkpoint(Path(cfg.train.resume))
        if found is not None:
            check_compatible(found, cfg)
        elif RunOutputs(run_dir, enabled=True).holds_a_run() and not cfg.run.overwrite:
            raise CheckpointError(f"run.dir '{run_dir}' holds a run but no complete checkpoint to resume from: "
                                  "set run.overwrite=true to start it over, or another run.dir")
        return found

    found = _agree(backend, locate)
    shared = backend.allgather_object(None if found is None else (str(found.path), found.manifest))[0]
    return None if shared is None else Checkpoint(Path(shared[0]), shared[1])


def _start_timeline(cfg: Config, backend: Backend, outputs: RunOutputs) -> Path | None:
    """Starts Horovod's timeline (horovod.timeline) once the run directory exists; rank 0 writes it."""
    if cfg.horovod.timeline is None:
        return None
    path = outputs.dir / cfg.horovod.timeline
    backend.hvd.start_timeline(str(path.resolve()), mark_cycles=cfg.horovod.timeline_mark_cycles)
    return path


def _train_epoch(cfg: Config, backend: Backend, world: World, dataset: Dataset, epoch: int,
                 progress: Progress, transform: Transform | None, schedule: LRSchedule, first_step: int,
                 outputs: RunOutputs) -> dict[str, Any]:
    """One epoch of optimizer steps, each over a window of `policy.accumulation_steps` micro-batches."""
    window_size = cfg.policy.accumulation_steps
    plan = plan_epoch(len(dataset.y_train), rank=world.rank, world_size=world.size,
                      batch_size=cfg.train.batch_size, seed=cfg.seed, epoch=epoch,
                      max_steps=cfg.train.max_steps_per_epoch, accumulation_steps=window_size)
    log_every = cfg.run.log_every_steps
    sums = np.zeros(3)
    progress.start_epoch(epoch, cfg.train.epochs, plan.steps)
    start = time.perf_counter()
    step = 0
    lr = schedule.at(first_step)
    window: list[tuple[np.ndarray, np.ndarray]] = []
    with BatchLoader(dataset.x_train, dataset.y_train, plan.indices, cfg.train.batch_size,
                     prefetch=cfg.data.prefetch_batches, transform=transform) as loader:
        for batch in loader:
            window.append(batch)
            if len(window) < window_size:
                continue
            lr = schedule.at(first_step + step)
            stats = backend.train_step(window, lr)
            window = []
            step += 1
            sums += stats.as_array()
            if log_every and (first_step + step) % log_every == 0:
                outputs.log_step({"step": first_step + step, "epoch": epoch + 1,
                                  "loss": stats.loss_sum / stats.count, "lr": backend.current_lr(),
                                  "loss_scale": backend.loss_scale()})
            rate = step * window_size * cfg.train.batch_size * world.size / (time.perf_counter() - start)
            progress.update(step, stats.loss_sum / stats.count, rate)
        data_wait = loader.wait_seconds
    elapsed = time.perf_counter() - start
    loss_sum, correct, count = backend.allreduce_sum(sums)
    return {
        "epoch": epoch + 1,
        "steps": step,
        "train_loss": loss_sum / count,
        "train_accuracy": correct / count,
        "lr": lr,
        "loss_scale": backend.loss_scale(),
        "epoch_time_s": elapsed,
        "samples_per_s": count / elapsed,
        "data_wait_fraction": data_wait / elapsed,
    }


def _evaluate(cfg: Config, backend: Backend, world: World, dataset: Dataset) -> dict[str, Any]:
    """Every validation sample exactly once across ranks; one allreduce of the sums at the end."""
    start = time.perf_counter()
    idx = shard_for_eval(len(dataset.y_val), world.rank, world.size)
    sums = np.zeros(3)
    for lo in range(0, len(idx), cfg.train.eval_batch_size):
        batch = idx[lo:lo + cfg.train.eval_batch_size]
        sums += backend.eval_step(dataset.x_val[batch], dataset.y_val[batch]).as_array()
    loss_sum, correct, count = backend.allreduce_sum(sums)
    if count == 0:
        return {"val_loss": None, "val_accuracy": None, "eval_time_s": time.perf_counter() - start}
    return {"val_loss": loss_sum / count, "val_accuracy": correct / count,
            "eval_time_s": time.perf_counter() - start}


def _summary(cfg: Config, backend: Backend, world: World, policy: ResolvedPolicy, history: list[dict[str, Any]],
             steps_per_rank: list[int], num_params: int, wall: float) -> dict[str, Any]:
    metric = "val_accuracy" if history[-1]["val_accuracy"] is not None else "train_accuracy"
    best = max(history, key=lambda r: r[metric])
    return {
        "backend": backend.name,
        "framework_version": backend.framework_version(),
        "hvdtrain_version": __version__,
        "world_size": world.size,
        "controller": world.controller,
        "device": world.device,
        "threads_per_rank": world.threads,
        "model": cfg.model.name,
        "num_parameters": num_params,
        "dataset": cfg.data.name,
        "epochs": len(history),
        "steps": steps_per_rank[0],
        "steps_per_rank": steps_per_rank,
        "global_batch_size": policy.global_batch,
        "accumulation_steps": policy.accumulation_steps,
        "base_lr": policy.base_lr,
        "scaled_lr": policy.scaled_lr,
        "precision": policy.precision,
        "compression": policy.compression,
        "reduce_op": policy.reduce_op,
        "final": history[-1],
        "best": {"metric": metric, **best},
        "mean_samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
        "wall_time_s": wall,
        "config_hash": config_hash(cfg),
    }


def check_same_config(cfg: Config, backend: Backend, world: World) -> None:
    """Stops every rank, naming the differing keys, if any rank resolved a different config."""
    if world.size == 1:
        return
    mine = flatten(to_dict(cfg))
    everyone = backend.allgather_object(mine)
    diffs = []
    for rank, theirs in enumerate(everyone):
        for key in sorted(set(mine) | set(theirs)):
            if theirs.get(key) != everyone[0].get(key):
                diffs.append(f"rank {rank} has {key}={theirs.get(key)!r} where rank 0 has "
                             f"{everyone[0].get(key)!r}")
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(f"ranks resolved different configs ({shown}): give every rank the same "
                          "--config file and overrides")


def _agree(backend: Backend, action: Any) -> Any:
    """Runs `action` on every rank; if it fails with a UserError on any rank, every rank raises it.

    Without this, a rank that cannot read its data would exit while the others wait in a collective.
    """
    error: UserError | None = None
    result = None
    try:
        result = action()
    except UserError as exc:
        error = exc
    messages = backend.allgather_object(str(error) if error else None)
    failed = [(rank, msg) for rank, msg in enumerate(messages) if msg is not None]
    if failed:
        rank, msg = failed[0]
        if error is not None:
            raise error
        raise UserError(f"{msg} (reported by rank {rank})")
    return result
