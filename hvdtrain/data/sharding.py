"""Per-rank sharding arithmetic: which samples each rank uses at each step of an epoch.

Contract (documented in README "Data and sharding"):
- The epoch's global order is `default_rng([seed, epoch]).permutation(N)` (or arange without shuffle); it
  does not depend on the world size or the rank.
- A global step covers `g = world_size * batch_size` consecutive positions of that order; rank r takes the
  contiguous slice `[s*g + r*B, s*g + (r+1)*B)`. So np=2 with batch B sees, at every step, exactly the
  samples np=1 with batch 2B sees.
- With gradient accumulation A, an optimizer step is A consecutive global micro-steps, and every rank
  takes `N // (g * A)` optimizer steps (capped by max_steps): only whole windows, so no rank waits in a
  collective for another and no window is partial. np=2 with batch B and accumulation A sees, per optimizer
  step, exactly the samples np=1 with batch 2AB sees.
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
    steps: int           # optimizer steps
    indices: np.ndarray  # this rank's sample indices in step order, (steps * accumulation * batch_size,)
    dropped: int         # samples of the global order not used this epoch: N - steps * accumulation * g
    accumulation_steps: int = 1

    @property
    def micro_steps(self) -> int:
        """Micro-batches this rank processes in the epoch."""
        return self.steps * self.accumulation_steps


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global sample order of an epoch, identical on every rank."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def plan_epoch(num_samples: int, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int,
               shuffle: bool = True, max_steps: int | None = None, accumulation_steps: int = 1,
               start: int = 0, order: np.ndarray | None = None) -> ShardPlan:
    """This rank's samples for one epoch, from position `start` of its order (see the module docstring);
    `order`: the epoch's global order when the source has its own (tar shards), else `epoch_order`."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    global_batch = world_size * batch_size
    window = global_batch * accumulation_steps
    if not 0 <= start <= num_samples:
        raise ValueError(f"start {start} is outside an epoch of {num_samples} samples")
    steps = (num_samples - start) // window
    if steps == 0 and start == 0:
        raise DataError(f"training set has {num_samples} samples, fewer than one global batch "
                        f"({world_size} ranks x train.batch_size={batch_size} x "
                        f"policy.accumulation_steps={accumulation_steps}): lower train.batch_size or "
                        "policy.accumulation_steps, or use fewer ranks")
    if max_steps is not None:
        steps = max(0, min(steps, max_steps - start // window))
    micro = steps * accumulation_steps
    if order is None:
        order = epoch_order(num_samples, seed, epoch, shuffle)
    order = order[start:start + micro * global_batch]
    mine = order.reshape(micro, world_size, batch_size)[:, rank, :].reshape(-1)
    return ShardPlan(rank=rank, world_size=world_size, batch_size=batch_size, steps=steps, indices=mine,
                     dropped=num_samples - start - micro * global_batch, accumulation_steps=accumulation_steps)


def shard_for_eval(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Validation indices of one rank: every sample exactly once over all ranks (sizes differ by <= 1)."""
    return np.arange(num_samples)[rank::world_size]
