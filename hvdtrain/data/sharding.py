"""Per-rank sharding arithmetic: which samples each rank uses at each step of an epoch.

Contract (documented in README "Data and sharding"):
- The epoch's global order is `default_rng([seed, epoch]).permutation(N)` (or arange without shuffle); it
  does not depend on the world size or the rank.
- A global step covers `g = world_size * batch_size` consecutive positions of that order; rank r takes the
  contiguous slice `[s*g + r*B, s*g + (r+1)*B)`. So np=2 with batch B sees, at every step, exactly the
  samples np=1 with batch 2B sees.
- Every rank takes `N // g` steps (capped by max_steps), so no rank waits in a collective for another.
  The remainder, fewer than g samples at the end of the order, is skipped this epoch; the order changes
  every epoch, so different samples are skipped each time. `dropped = N - steps * g` counts the unused
  samples (with max_steps, also those after the last step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvdtrain.errors import DataError


@dataclass(frozen=True)
class ShardPlan:
    """One rank's share of one epoch."""

    rank: int
    world_size: int
    batch_size: int
    steps: int
    indices: np.ndarray  # this rank's sample indices in step order, (steps * batch_size,)
    dropped: int         # samples of the global order not used this epoch: N - steps * g


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global sample order of an epoch, identical on every rank."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def plan_epoch(num_samples: int, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int,
               shuffle: bool = True, max_steps: int | None = None) -> ShardPlan:
    """This rank's samples for one epoch (see the module docstring for the contract)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    global_batch = world_size * batch_size
    steps = num_samples // global_batch
    if steps == 0:
        raise DataError(f"training set has {num_samples} samples, fewer than one global batch "
                        f"({world_size} ranks x train.batch_size={batch_size}): lower train.batch_size "
                        "or use fewer ranks")
    if max_steps is not None:
        steps = min(steps, max_steps)
    order = epoch_order(num_samples, seed, epoch, shuffle)[:steps * global_batch]
    mine = order.reshape(steps, world_size, batch_size)[:, rank, :].reshape(-1)
    return ShardPlan(rank=rank, world_size=world_size, batch_size=batch_size, steps=steps, indices=mine,
                     dropped=num_samples - steps * global_batch)


def shard_for_eval(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Validation indices of one rank: every sample exactly once over all ranks (sizes differ by <= 1)."""
    return np.arange(num_samples)[rank::world_size]
