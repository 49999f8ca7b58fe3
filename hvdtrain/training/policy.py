"""The training policy resolved for one world: the step policy every backend follows, the effective batch,
LR scaling and the start-up line (docs/policy.md).

The policy has one source: `StepPolicy.from_config(cfg.policy)` is what backends receive (in their
BuildSpec) and what `ResolvedPolicy.step` holds; this module adds what depends on the world.
"""

from __future__ import annotations

from dataclasses import dataclass

from hvdtrain.backend import StepPolicy
from hvdtrain.config import Config
from hvdtrain.distributed.communicator import World
from hvdtrain.errors import ConfigError


@dataclass(frozen=True)
class ResolvedPolicy:
    """The policy of one run on one world."""

    world_size: int
    micro_batch: int
    step: StepPolicy
    base_lr: float
    lr_multiplier: float

    @property
    def accumulation_steps(self) -> int:
        return self.step.accumulation_steps

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.world_size * self.micro_batch * self.step.accumulation_steps

    @property
    def scaled_lr(self) -> float:
        return self.base_lr * self.lr_multiplier

    def describe(self) -> str:
        """The one line rank 0 prints at start."""
        return (f"policy: {self.world_size} rank(s) x micro-batch {self.micro_batch} x accumulation "
                f"{self.accumulation_steps} = global batch {self.global_batch}; LR {self.base_lr:g} -> "
                f"{self.scaled_lr:g} (x{self.lr_multiplier:g}); precision {self.step.precision}; compression "
                f"{self.step.compression}; reduce {self.step.reduce_op}")


def lr_multiplier(cfg: Config, world: World, nccl_built: bool = False) -> float:
    """How much the base LR grows with the world (docs/policy.md, "LR scaling").

    linear: world size x accumulation steps (Goyal et al.: the LR follows the global batch). With Adasum,
    Horovod's rule instead: Adasum already adapts to the number of ranks, so only the ranks that NCCL
    averages inside a node count (local size on NCCL builds, else 1), times accumulation.
    """
    policy = cfg.policy
    if policy.lr_scaling == "none":
        return 1.0
    ranks = (world.local_size if nccl_built else 1) if policy.reduce_op == "adasum" else world.size
    return float(ranks * policy.accumulation_steps)


def check_world(cfg: Config, world: World) -> None:
    """Policy constraints that depend on how the job was launched (same verdict on every rank)."""
    if cfg.policy.reduce_op != "adasum" or world.size == 1:
        return
    if world.controller != "mpi":
        raise ConfigError("policy.reduce_op=adasum needs Horovod's MPI controller, but this job runs on "
                          "Gloo: launch with mpirun or horovodrun without --gloo, or set "
                          "policy.reduce_op=average")
    if world.size & (world.size - 1):
        raise ConfigError(f"policy.reduce_op=adasum needs a power-of-2 number of ranks, got {world.size}: "
                          "launch 2, 4, 8... ranks or set policy.reduce_op=average")


def resolve_policy(cfg: Config, world: World, nccl_built: bool = False) -> ResolvedPolicy:
    """Checks the policy against the world and derives its numbers."""
    check_world(cfg, world)
    return ResolvedPolicy(world_size=world.size, micro_batch=cfg.train.batch_size,
                          step=StepPolicy.from_config(cfg.policy), base_lr=cfg.optim.lr,
                          lr_multiplier=lr_multiplier(cfg, world, nccl_built))
