"""`python -m hvdtrain bench`: a synthetic training benchmark in the style of Horovod's
pytorch_synthetic_benchmark.py, for either backend, with the config's model and policy applied.

Random images of `data.synthetic_shape` and random labels stay in memory; after warm-up batches, each of
`--iters` timed iterations runs `--batches-per-iter` optimizer steps through the backend's own
`train_step` (so precision, accumulation, compression and reduction are what training uses). Rank 0 prints
img/s per rank as the mean over iterations with a 95% interval (1.96 standard deviations, as Horovod's
script does) and the total over ranks.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.backend import Backend
from hvdtrain.config import Config, to_dict
from hvdtrain.errors import UserError
from hvdtrain.files import write_atomic
from hvdtrain.training.policy import resolve_policy
from hvdtrain.training.setup import build_spec


def run_bench(cfg: Config, backend: Backend, warmup_batches: int, batches_per_iter: int, iters: int,
              json_path: Path | None) -> dict[str, Any]:
    """Runs the benchmark on every rank; rank 0 prints and writes `json_path`. Returns the result."""
    for name, value in (("--warmup-batches", warmup_batches), ("--batches-per-iter", batches_per_iter),
                        ("--iters", iters)):
        if value < (0 if name == "--warmup-batches" else 1):
            raise UserError(f"{name} must be {'>= 0' if name == '--warmup-batches' else '>= 1'}, got {value}")
    if json_path is not None and not json_path.parent.is_dir():
        raise UserError(f"--json directory '{json_path.parent}' does not exist: create it or write elsewhere")
    placement = backend.setup(cfg.train.threads_per_rank)
    world = backend.comm.world()
    policy = resolve_policy(cfg, world, nccl_built=backend.comm.nccl_built())
    shape = cfg.data.synthetic_shape
    classes = cfg.data.num_classes
    num_params = backend.build(build_spec(cfg, shape, classes, allreduce=world.size > 1))  # as train does
    backend.sync()
    rng = np.random.default_rng(cfg.seed + world.rank)
    batch = cfg.train.batch_size
    x = rng.random((batch, *shape), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    window = [(x, y)] * policy.accumulation_steps
    lr = policy.scaled_lr
    def say(text: str) -> None:  # one write per line: launchers that tag output lines split separate writes
        if world.rank == 0:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    say(f"bench: backend {backend.name}, model {cfg.model.name} ({num_params:,} parameters), input {list(shape)}, "
        f"batch {batch} per rank x accumulation {policy.accumulation_steps}, {world.size} rank(s) via "
        f"{world.controller}, device {placement.device}, precision {policy.step.precision}, compression "
        f"{policy.step.compression}")
    for _ in range(warmup_batches):
        backend.train_step(window, lr)
    images_per_iter = batch * policy.accumulation_steps * batches_per_iter
    rates = []
    for i in range(iters):
        start = time.perf_counter()
        for _ in range(batches_per_iter):
            backend.train_step(window, lr)
        rate = images_per_iter / (time.perf_counter() - start)
        rates.append(rate)
        say(f"iter #{i}: {rate:.1f} img/s per rank")
    per_rank = np.array(rates)
    mean, interval = float(per_rank.mean()), float(1.96 * per_rank.std())
    everyone = backend.comm.allgather_object(mean)
    result = {
        "backend": backend.name, "framework_version": backend.framework_version(), "model": cfg.model.name,
        "num_parameters": num_params, "input_shape": list(shape), "batch_size": batch,
        "accumulation_steps": policy.accumulation_steps, "precision": policy.step.precision,
        "compression": policy.step.compression, "reduce_op": policy.step.reduce_op, "world_size": world.size,
        "controller": world.controller, "device": placement.device, "threads_per_rank": placement.threads,
        "warmup_batches": warmup_batches, "batches_per_iter": batches_per_iter, "iters": iters,
        "img_per_s_per_rank": mean, "img_per_s_per_rank_ci95": interval,
        "img_per_s_per_rank_all": everyone, "img_per_s_total": float(sum(everyone)),
        "iterations_img_per_s": rates, "config": to_dict(cfg),
    }
    say(f"img/s per rank: {mean:.1f} +-{interval:.1f}")
    say(f"total img/s on {world.size} rank(s): {result['img_per_s_total']:.1f} +-{interval * world.size:.1f}")
    if json_path is not None and world.rank == 0:
        write_atomic(json_path, json.dumps(result, indent=1) + "\n")
    return result
