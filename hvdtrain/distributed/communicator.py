"""Horovod, written once for both frameworks.

horovod.torch and horovod.tensorflow share their basic API (init, ranks, allreduce, object collectives,
timeline, shutdown); only how a numpy array becomes a tensor, and how a failed collective surfaces, differ.
So a backend hands its framework's Horovod module and those two facts to one `Communicator` (the shape of
Horovod's own horovod/_keras, one implementation given the framework module), and nothing else in
hvdtrain calls Horovod's process-level API.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hvdtrain.errors import ConfigError, UserError

T = TypeVar("T")
# A fixed name for every object collective: Horovod otherwise names it after type(obj), and ranks holding
# different types (None on one, a message on another) would wait on different collectives forever.
_OBJECT_COLLECTIVE = "hvdtrain.object"


@dataclass(frozen=True)
class World:
    """Where this process sits in the Horovod job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    controller: str  # "gloo" or "mpi"


class Communicator:
    """One framework's Horovod module behind the collectives the framework-neutral code needs.

    `as_tensor` turns a float64 numpy vector into the framework's tensor; a collective that fails because
    a peer died raises Horovod's `HorovodInternalError`, or, inside a traced TensorFlow step, one of
    `failure_types` whose message names Horovod.
    """

    def __init__(self, hvd: Any, as_tensor: Callable[[np.ndarray], Any],
                 failure_types: tuple[type[BaseException], ...] = ()) -> None:
        self._hvd = hvd
        self._as_tensor = as_tensor
        self._failure_types = failure_types
        # One rank: the collectives below answer without Horovod (the same values: a sum, gather or broadcast
        # over one rank is its own), so nothing waits for Horovod's cycle. Set at every (re-)initialisation.
        self._alone = False

    # --- lifecycle ---------------------------------------------------------------------------------------
    def init(self) -> World:
        """Starts Horovod's controller (Gloo under horovodrun, MPI under mpirun) and returns the world."""
        self._hvd.init()
        world = self.world()
        self._alone = world.size == 1
        return world

    def world(self) -> World:
        hvd = self._hvd
        return World(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), local_size=hvd.local_size(),
                     controller="mpi" if hvd.mpi_enabled() else "gloo")

    def reset(self) -> World:
        """Elastic reset: re-initialises Horovod over the new world."""
        self._hvd.shutdown()
        return self.init()

    def shutdown(self) -> None:
        self._hvd.shutdown()

    def running(self) -> bool:
        """Whether Horovod is initialised (and not shut down) in this process."""
        return bool(self._hvd.is_initialized())

    def nccl_built(self) -> bool:
        return bool(self._hvd.nccl_built())

    def is_collective_failure(self, exc: BaseException) -> bool:
        """Whether `exc` is a collective that could not complete (a peer died or Horovod shut down)."""
        from horovod.common.exceptions import HorovodInternalError

        if isinstance(exc, HorovodInternalError):
            return True
        return isinstance(exc, self._failure_types) and "Horovod" in str(exc)

    # --- collectives: every rank calls them, in the same order ---------------------------------------
    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of a small float64 vector over all ranks."""
        if self._alone:
            return np.array(values, dtype=np.float64)
        tensor = self._as_tensor(np.asarray(values, dtype=np.float64))
        return np.asarray(self._hvd.allreduce(tensor, op=self._hvd.Sum, name="hvdtrain.metrics"))

    def barrier(self) -> None:
        """Returns once every rank has called it."""
        if not self._alone:
            self._hvd.allreduce(self._as_tensor(np.zeros(1)), op=self._hvd.Sum, name="hvdtrain.barrier")

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order, on every rank (copies, as received)."""
        if self._alone:
            return [copy.deepcopy(obj)]
        return list(self._hvd.allgather_object(obj, name=_OBJECT_COLLECTIVE))

    def broadcast_object(self, obj: T, name: str = "hvdtrain.broadcast") -> T:
        """Rank 0's `obj` on every rank (a copy, as received)."""
        if self._alone:
            return copy.deepcopy(obj)
        shared: T = self._hvd.broadcast_object(obj, root_rank=0, name=name)
        return shared

    def agree(self, action: Callable[[], T]) -> T:
        """Runs `action` on every rank; if it raises a UserError on any rank, every rank raises it.

        Without this, a rank that cannot read its data would exit while the others wait in a collective.
        """
        error: UserError | None = None
        try:
            result = action()
        except UserError as exc:
            error = exc
        failed = [(rank, msg) for rank, msg in enumerate(self.allgather_object(str(error) if error else None))
                  if msg is not None]
        if failed:
            if error is not None:
                raise error
            rank, msg = failed[0]
            raise UserError(f"{msg} (reported by rank {rank})")
        return result  # bound: a rank whose action raised is in `failed` and raised above

    def check_same(self, values: Mapping[str, Any]) -> None:
        """Stops every rank, naming the differing keys, if any rank holds different `values` (the resolved
        config, flattened)."""
        everyone = self.allgather_object(dict(values))
        diffs = []
        for rank, theirs in enumerate(everyone):
            for key in sorted(set(values) | set(theirs)):
                if theirs.get(key) != everyone[0].get(key):
                    diffs.append(f"rank {rank} has {key}={theirs.get(key)!r} where rank 0 has "
                                 f"{everyone[0].get(key)!r}")
        if diffs:
            shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
            raise ConfigError(f"ranks resolved different configs ({shown}): give every rank the same "
                              "--config file and overrides")

    # --- Horovod's timeline ----------------------------------------------------------------------------
    def start_timeline(self, path: Path, mark_cycles: bool) -> None:
        self._hvd.start_timeline(str(path.resolve()), mark_cycles=mark_cycles)

    def stop_timeline(self) -> None:
        self._hvd.stop_timeline()
