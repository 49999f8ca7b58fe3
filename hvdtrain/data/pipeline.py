"""A rank's input pipeline for a run: its data worker pool (data.workers) and the loaders it hands out for
each training epoch and for evaluation."""

from __future__ import annotations

import math
import os

import numpy as np

from hvdtrain.augment.pipeline import AugmentPipeline
from hvdtrain.config import Config
from hvdtrain.data.loader import BatchLoader, Transform
from hvdtrain.data.sharding import plan_epoch, shard_for_eval
from hvdtrain.data.source import Dataset
from hvdtrain.data.workers import WorkerPool
from hvdtrain.errors import ConfigError


def resolve_workers(requested: int | None, on_disk: bool, threads_per_rank: int, local_size: int) -> int:
    """data.workers: as set, else for on-disk data the cores left to each rank after its compute threads (at
    least 1: the training process never decodes), and 0 (a thread) for in-memory data."""
    if requested is not None:
        return requested
    if not on_disk:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_size) - threads_per_rank)


class InputPipeline:
    """The loaders of one rank; the worker pool (if any) lives until `close`."""

    def __init__(self, cfg: Config, dataset: Dataset, workers: int) -> None:
        self.cfg, self.dataset, self.workers = cfg, dataset, workers
        if workers and cfg.augment.random and cfg.augment.kernel == "framework" and cfg.augment.device != "gpu":
            raise ConfigError(f"augment.kernel=framework runs in the training process, but data.workers={workers} "
                              "augments in worker processes: set augment.kernel=auto (or native), or data.workers=0")
        self.pool: WorkerPool | None = None
        if workers:
            batch = max(cfg.train.batch_size, cfg.train.eval_batch())
            pixels = batch * math.prod(dataset.image_shape) * 4  # float32 after augmentation, at most
            self.pool = WorkerPool({"train": dataset.train, "val": dataset.val}, workers,
                                   slot_bytes=pixels + batch * 8 + 256, timeout_s=cfg.data.worker_timeout_s)

    @property
    def checks_reads(self) -> bool:
        """Whether reads can fail mid-epoch (on-disk data): the loop then agrees on failures every step."""
        return bool(self.dataset.train.on_disk or self.dataset.val.on_disk)

    def train_loader(self, indices: np.ndarray, transform: Transform | None) -> BatchLoader:
        """The batches of `indices` (this rank's share of the rest of an epoch), with the epoch's transform."""
        return BatchLoader(self.dataset.train, None, indices, self.cfg.train.batch_size,
                           prefetch=self.cfg.data.prefetch_batches, transform=transform, pool=self.pool,
                           source_key="train", skip_errors=self.cfg.data.on_error == "skip")

    def eval_loader(self, rank: int, world_size: int, transform: Transform | None) -> BatchLoader:
        """This rank's validation batches: every validation sample once across ranks."""
        indices = shard_for_eval(len(self.dataset.val), rank, world_size)
        return BatchLoader(self.dataset.val, None, indices, self.cfg.train.eval_batch(),
                           prefetch=self.cfg.data.prefetch_batches, transform=transform,
                           pool=self.pool, source_key="val", skip_errors=self.cfg.data.on_error == "skip")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_train_loader(cfg: Config, dataset: Dataset, rank: int = 0, world_size: int = 1, epoch: int = 0,
                      augment: AugmentPipeline | None = None, local_size: int | None = None) -> BatchLoader:
    """One epoch's training batches of one rank, outside a training run (benchmarks, inspection), with the
    run's workers, augmentation (CPU kernel) and sharding; use it as a context manager."""
    augment = augment or AugmentPipeline(cfg.augment, None, None)
    on_disk = dataset.train.on_disk
    workers = resolve_workers(cfg.data.workers, on_disk, 1, local_size or world_size)
    pipeline = InputPipeline(cfg, dataset, workers)
    plan = plan_epoch(len(dataset.train), rank=rank, world_size=world_size, batch_size=cfg.train.batch_size,
                      seed=cfg.seed, epoch=epoch, accumulation_steps=cfg.policy.accumulation_steps,
                      order=dataset.train.epoch_order(cfg.seed, epoch, True))
    loader = pipeline.train_loader(plan.indices, augment.train_transform(cfg.seed, rank, epoch))
    loader.on_close = pipeline.close
    return loader
