"""Elastic training: the loop under Horovod's elastic API when horovodrun starts the job elastically.

Horovod's `run_fn` calls the training function again after every reset (a worker died, or hosts were
added): survivors first roll back to the last commit, Horovod is re-initialised over the new world, and
rank 0's state is broadcast to everyone, newcomers included. The state here is framework-neutral: the
backend snapshots and broadcasts its own model/optimizer/loss-scaler state, and the loop's position
(`TrainingState`) travels as a Python object.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from hvdtrain.training.state import TrainingState


def elastic_launch() -> bool:
    """Whether horovodrun started this worker elastically (--min-np/--max-np/--host-discovery-script)."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


class ElasticBackend(Protocol):
    hvd: Any

    def snapshot(self) -> Any: ...
    def restore_snapshot(self, snapshot: Any) -> None: ...
    def sync_state(self) -> None: ...
    def reset(self) -> None: ...
    def is_collective_failure(self, exc: BaseException) -> bool: ...


class LocalState:
    """The training state of a job that is not elastic: nothing to commit or roll back."""

    def __init__(self, progress: TrainingState) -> None:
        self.progress = progress

    def commit(self) -> None:
        pass


def run_elastic(body: Callable[[Any], Any], progress: TrainingState, backend: ElasticBackend) -> Any:
    """Runs `body(state)` under Horovod's elastic loop until it returns; `state.progress` is `progress`."""
    from horovod.common.elastic import State, run_fn
    from horovod.common.exceptions import HorovodInternalError

    hvd = backend.hvd

    class ElasticState(State):
        """Commits (in memory) the backend's state and the loop's position; rank 0's wins at a sync."""

        def __init__(self) -> None:
            super().__init__(bcast_object=lambda obj: hvd.broadcast_object(obj, root_rank=0,
                                                                          name="hvdtrain.training.elastic"),
                             get_rank=hvd.rank)
            self.progress = progress
            self._saved: tuple[Any, TrainingState] | None = None
            self.save()

        def save(self) -> None:
            self._saved = (backend.snapshot(), self.progress.copy())

        def restore(self) -> None:
            assert self._saved is not None
            backend.restore_snapshot(self._saved[0])
            self.progress.assign(self._saved[1])

        def sync(self) -> None:
            backend.sync_state()
            self.progress.assign(TrainingState.from_dict(self._bcast_object(self.progress.to_dict())))
            self.save()

    def guarded(state: ElasticState) -> Any:
        try:
            return body(state)
        except Exception as exc:  # a framework's own wrapping of a failed collective
            if backend.is_collective_failure(exc) and not isinstance(exc, HorovodInternalError):
                raise HorovodInternalError(exc) from exc
            raise

    return run_fn(guarded, backend.reset)(ElasticState())
