"""Minimal hand-written training loops: the baselines hvdtrain's trainer is measured against.

    horovodrun -np 2 python -m benchmarks.handwritten torch-horovod --config C [key=value ...] --json OUT
    horovodrun -np 2 python -m benchmarks.handwritten tensorflow-horovod --config C ... --json OUT
    torchrun --standalone --nproc-per-node 2 -m benchmarks.handwritten torch-ddp --config C ... --json OUT

Each is what a user would write by hand from the Horovod (or PyTorch DDP) docs: init, the same model
(hvdtrain's model builders, so the networks are identical), SGD scaled by the world size, broadcast of the
initial state, then per step: take the next batch of this rank's shard of a shuffled in-memory dataset,
forward, cross-entropy, backward, allreduce, update. No metrics, no logging, no checkpoints, no loader
thread. Rank 0 writes the wall time of every epoch (after a barrier) to OUT as JSON.

The dataset, batch size, epochs, step cap, seed and threads per rank come from the same hvdtrain config
the trainer runs, so both sides do the same number of steps on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.augment.pipeline import pixels
from hvdtrain.config import Config, load_config
from hvdtrain.data import load_dataset, read_all
from hvdtrain.distributed.environment import threads_for_rank

LOOPS = ("torch-horovod", "torch-ddp", "tensorflow-horovod")


def shard_batches(num_samples: int, rank: int, size: int, batch: int, seed: int, epoch: int,
                  max_steps: int | None) -> list[np.ndarray]:
    """This rank's batches of one epoch: a shuffled order, split rank by rank, whole global batches only."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    steps = num_samples // (size * batch)
    if max_steps is not None:
        steps = min(steps, max_steps)
    return [order[(s * size + rank) * batch:(s * size + rank + 1) * batch] for s in range(steps)]


def _torch_loop(cfg: Config, loop: str) -> tuple[int, list[float]]:
    import torch
    import torch.nn.functional as F

    from torch_backend.models import build_model

    if loop == "torch-ddp":
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, size, local_size = dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_WORLD_SIZE"])
        barrier = dist.barrier
    else:
        import horovod.torch as hvd

        hvd.init()
        rank, size, local_size = hvd.rank(), hvd.size(), hvd.local_size()
        barrier = hvd.barrier  # type: ignore[assignment]
    torch.set_num_threads(threads_for_rank(cfg.train.threads_per_rank, local_size))
    device = torch.device("cpu")
    if torch.cuda.is_available():  # Horovod's docs: one GPU per local rank
        local_rank = int(os.environ.get("LOCAL_RANK", 0)) if loop == "torch-ddp" else hvd.local_rank()
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    data = load_dataset(cfg.data, cfg.seed)
    x, y = read_all(data.train)  # the benchmark's in-memory set, whole, as a hand-written loop holds it
    x = pixels(x)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tuple(x.shape[1:]), data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr * size, momentum=cfg.optim.momentum)
    if loop == "torch-ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's parameters
    else:
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    model.train()

    def epoch(e: int) -> None:
        for idx in shard_batches(len(y), rank, size, cfg.train.batch_size, cfg.seed, e,
                                 cfg.train.max_steps_per_epoch):
            images = torch.from_numpy(x[idx]).to(device).permute(0, 3, 1, 2)
            labels = torch.from_numpy(y[idx]).to(device)
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()

    times = _time_epochs(cfg.train.epochs, epoch, barrier)
    if loop == "torch-ddp":
        # Gloo's process group left to the interpreter's exit can abort the process (SIGABRT) at teardown.
        dist.destroy_process_group()
    return rank, times


def _tensorflow_loop(cfg: Config) -> tuple[int, list[float]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import horovod.tensorflow as hvd
    import keras
    import tensorflow as tf

    from tf_backend.models import build_model

    hvd.init()
    threads = threads_for_rank(cfg.train.threads_per_rank, hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # Horovod's docs: one visible GPU per local rank
        tf.config.experimental.set_memory_growth(gpus[hvd.local_rank() % len(gpus)], True)
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    data = load_dataset(cfg.data, cfg.seed)
    x, y = read_all(data.train)  # the benchmark's in-memory set, whole, as a hand-written loop holds it
    x = pixels(x)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg.model, tuple(x.shape[1:]), data.num_classes)
    optimizer = keras.optimizers.SGD(cfg.optim.lr * hvd.size(), momentum=cfg.optim.momentum)
    optimizer.build(model.trainable_variables)
    # hvd.broadcast_variables assigns to tf.Variables; Keras 3 variables need their own assign.
    for i, var in enumerate(model.variables + optimizer.variables):
        var.assign(hvd.broadcast(tf.convert_to_tensor(var), root_rank=0, name=f"init.{i}"))

    @tf.function
    def step(images: tf.Tensor, labels: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        # What hvd.DistributedGradientTape does by default (one allreduce per gradient, fused by Horovod);
        # the tape itself fails on Keras 3 variables in Horovod 0.28.1 (it calls Variable.ref()).
        grads = [hvd.allreduce(g, op=hvd.Average, name=f"grad.{i}")
                 for i, g in enumerate(tape.gradient(loss, model.trainable_variables))]
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    def epoch(e: int) -> None:
        for idx in shard_batches(len(y), hvd.rank(), hvd.size(), cfg.train.batch_size, cfg.seed, e,
                                 cfg.train.max_steps_per_epoch):
            step(x[idx], y[idx])

    # horovod.tensorflow 0.28.1 has no barrier(): a one-number allreduce is one.
    return hvd.rank(), _time_epochs(cfg.train.epochs, epoch, lambda: hvd.allreduce(tf.zeros(1), name="barrier"))


def _time_epochs(epochs: int, run_epoch: Callable[[int], None], barrier: Callable[[], Any]) -> list[float]:
    times = []
    for e in range(epochs):
        barrier()
        start = time.perf_counter()
        run_epoch(e)
        barrier()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loop", choices=LOOPS)
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, as for hvdtrain")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.loop == "tensorflow-horovod":
        rank, times = _tensorflow_loop(cfg)
    else:
        rank, times = _torch_loop(cfg, args.loop)
    if rank == 0:
        args.json.write_text(json.dumps({"loop": args.loop, "epoch_times_s": times}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
