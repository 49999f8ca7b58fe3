"""Elastic training: the loop under Horovod's elastic API when horovodrun starts the job elastically.

Horovod's `run_fn` calls the training function again after every reset (a worker died, or hosts were
added): survivors first roll back to the last commit, Horovod is re-initialised over the new world, and
rank 0's state is broadcast to everyone, newcomers included. The state here is framework-neutral: the
backend copies and broadcasts its own model/optimizer/loss-scale state, and the loop's position
(`TrainingState`) travels as a Python object.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hvdtrain.backend import Backend
from hvdtrain.training.state import TrainingState


def elastic_launch() -> bool:
    """Whether horovodrun started this worker elastically (--min-np/--max-np/--host-discovery-script)."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


class LocalState:
    """The training state of a job that is not elastic: nothing to commit or roll back."""

    def __init__(self, training: TrainingState) -> None:
        self.training = training

    def commit(self) -> None:
        pass


def run_elastic(body: Callable[[Any], Any], training: TrainingState, backend: Backend) -> Any:
    """Runs `body(state)` under Horovod's elastic loop until it returns; `state.training` is `training`."""
    from horovod.common.elastic import State, run_fn
    from horovod.common.exceptions import HorovodInternalError

    comm = backend.comm

    class ElasticState(State):  # type: ignore[misc]  # Horovod's class is untyped
        """Commits (in memory) the backend's state and the loop's position; rank 0's wins at a sync."""

        def __init__(self) -> None:
            super().__init__(bcast_object=lambda obj: comm.broadcast_object(obj, "hvdtrain.elastic"),
                             get_rank=lambda: comm.world().rank)
            self.training = training
            self._saved: tuple[Any, TrainingState] | None = None
            self.save()

        def save(self) -> None:
            self._saved = (backend.state(), self.training.copy())

        def restore(self) -> None:
            assert self._saved is not None
            backend.load_state(self._saved[0])
            self.training.assign(self._saved[1])

        def sync(self) -> None:
            backend.sync()
            self.training.assign(TrainingState.from_dict(self._bcast_object(self.training.to_dict())))
            self.save()

    def guarded(state: ElasticState) -> Any:
        try:
            return body(state)
        except Exception as exc:  # a framework's own wrapping of a failed collective
            if comm.is_collective_failure(exc) and not isinstance(exc, HorovodInternalError):
                raise HorovodInternalError(exc) from exc
            raise

    def reset() -> None:
        comm.reset()
        backend.reset()

    return run_fn(guarded, reset)(ElasticState())
