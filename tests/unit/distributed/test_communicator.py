"""The Communicator at one rank: its collectives answer without Horovod, with the values Horovod would give."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import numpy as np

from hvdtrain.distributed.communicator import Communicator


class RecordingHorovod(SimpleNamespace):
    """Horovod's module-level API as the Communicator calls it, over `size` ranks of which this is rank 0; each
    collective is recorded and answers as rank 0 alone would (the sum, gather and broadcast of its own values)."""

    Sum = "sum"

    def __init__(self, size: int) -> None:
        super().__init__(calls=[], size=lambda: size)

    def init(self) -> None:
        self.calls.append("init")

    def rank(self) -> int:
        return 0

    def local_rank(self) -> int:
        return 0

    def local_size(self) -> int:
        return int(self.size())

    def mpi_enabled(self) -> bool:
        return True

    def allreduce(self, tensor: Any, op: Any, name: str) -> Any:
        self.calls.append(name)
        return tensor

    def allgather_object(self, obj: Any, name: str) -> list[Any]:
        self.calls.append(name)
        return [pickle.loads(pickle.dumps(obj))]  # what a rank receives is unpickled

    def broadcast_object(self, obj: Any, root_rank: int, name: str) -> Any:
        self.calls.append(name)
        return pickle.loads(pickle.dumps(obj))


def _exercise(comm: Communicator) -> tuple[Any, ...]:
    state = {"step": 3, "weights": [np.ones(2)]}
    sums = comm.allreduce_sum(np.array([1.5, 2.0]))
    comm.barrier()
    gathered = comm.allgather_object(state)
    shared = comm.broadcast_object(state)
    assert gathered[0] is not state and shared is not state  # copies, as received from a collective
    return sums.tolist(), gathered, shared


def test_one_rank_answers_alone_and_two_ranks_go_through_horovod() -> None:
    alone, pair = RecordingHorovod(size=1), RecordingHorovod(size=2)
    comm_alone, comm_pair = Communicator(alone, as_tensor=np.asarray), Communicator(pair, as_tensor=np.asarray)
    assert comm_alone.init().size == 1 and comm_pair.init().size == 2
    results_alone, results_pair = _exercise(comm_alone), _exercise(comm_pair)
    assert alone.calls == ["init"]  # nothing waits for Horovod's cycle
    assert pair.calls == ["init", "hvdtrain.metrics", "hvdtrain.barrier", "hvdtrain.object", "hvdtrain.broadcast"]
    assert repr(results_alone) == repr(results_pair)  # the same answers
