"""Every collective the training loop makes, in one place.

Each function here must be called by every rank at the same point of the run: a rank that skips one, or
calls them in another order, leaves the others waiting forever. The loop (hvdtrain/training/loop.py and
engine.py) calls them in this order:

    every entry (again after an elastic reset)  check_same_config
    first entry                                  comm.agree(...) around dataset, callbacks, build spec, resume
                                                 (find_resume), fine-tuning weights and the run directory;
                                                 backend.sync() (rank 0's state to everyone)
    every entry                                  featurewise statistics (hvdtrain/augment/standardize.py)
    every micro-batch, when reads can fail       stop_on_failure (on-disk data: image_folder, shards, yours)
    every step                                   the backend's gradient allreduce (inside train_step);
                                                 masks_from_rank0 at pruning steps
    checkpoints, elastic commits, epoch ends     fold_sums
    before evaluations, checkpoints, final save  backend.sync_batchnorm_statistics (model.batchnorm_stats)
    every epoch end                              evaluate, any_rank; gather (data.log_samples)
    run end                                      gather (steps per rank, mask digests, profile totals)

Framework-neutral: they go through the backend's `Communicator` (hvdtrain/distributed/communicator.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.backend import Backend
from hvdtrain.config import Config, flatten, to_dict
from hvdtrain.distributed.communicator import Communicator
from hvdtrain.errors import DataError, JobAborted, UserError
from hvdtrain.tasks import sums as named
from hvdtrain.tasks.metrics import Sums
from hvdtrain.tasks.task import TaskSpec
from hvdtrain.training.checkpoint import Checkpoint
from hvdtrain.training.run_dir import resume_point

SKIPPED, FAILED = "skipped", "failed"  # sums beside the task's: samples left unread, and whether reading failed


def check_same_config(comm: Communicator, cfg: Config, world_size: int) -> None:
    """Stops every rank, naming the differing keys, if any rank resolved a different config."""
    if world_size > 1:
        comm.check_same(flatten(to_dict(cfg)))


def find_resume(comm: Communicator, cfg: Config, rank: int) -> Checkpoint | None:
    """The checkpoint to continue from (train.resume), as rank 0 finds it; every rank gets its manifest, so
    all ranks start from the same epoch and step (rank 0 alone reads the state files)."""
    resume = cfg.train.resume
    if resume is None:
        return None

    def locate() -> Checkpoint | None:
        return resume_point(cfg) if rank == 0 else None

    found = comm.agree(locate)
    shared = comm.broadcast_object(None if found is None else (str(found.path), found.manifest), "hvdtrain.resume")
    return None if shared is None else Checkpoint(Path(shared[0]), shared[1])


def fold_sums(comm: Communicator, local: Sums) -> Sums:
    """The sum over ranks of each rank's named sums (loss, count, metrics' sums, skipped samples) since the last
    fold, in one allreduce."""
    return named.allreduce(comm.allreduce_sum, local)


def evaluate(comm: Communicator, backend: Backend, batches: Iterable[tuple[Any, ...]],
             skipped: Callable[[], int], task: TaskSpec, width: int) -> tuple[Sums, int]:
    """Every validation sample exactly once across ranks (the batches of this rank's share); one allreduce of the
    named sums, which also tells every rank whether reading failed on one: (sums, skipped samples)."""
    sums, failure = task.empty_sums(width), None
    try:
        for batch in batches:
            sums = named.add(sums, task.step_sums(backend.eval_step(batch[0], batch[1]), batch[1]))
    except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every rank
        failure = exc
    sums[SKIPPED], sums[FAILED] = np.float64(skipped()), np.float64(failure is not None)
    total = named.allreduce(comm.allreduce_sum, sums)
    if total.pop(FAILED):
        raise_agreed_failure(comm, failure)
    return total, int(total.pop(SKIPPED))


def stop_on_failure(comm: Communicator, failure: BaseException | None) -> None:
    """Every rank calls this at the same point (each training micro-batch when reads can fail): when reading
    failed on any rank, every rank stops together instead of waiting in the next collective forever."""
    if any_rank(comm, failure is not None):
        raise_agreed_failure(comm, failure)


def raise_agreed_failure(comm: Communicator, failure: BaseException | None) -> None:
    """Raises on every rank once some rank failed (a collective): a data error becomes the same one line on
    every rank, naming the rank and the sample; any other failure keeps its traceback on its own rank."""
    messages = comm.allgather_object(None if failure is None else (isinstance(failure, UserError), str(failure)))
    rank, (is_user_error, message) = next((r, m) for r, m in enumerate(messages) if m is not None)
    if failure is not None and not isinstance(failure, UserError):
        raise failure
    if is_user_error:
        raise DataError(f"rank {rank}: {message}")
    raise JobAborted(f"rank {rank} failed while reading data ({message.strip().splitlines()[-1]}): see its error")


def any_rank(comm: Communicator, flag: bool) -> bool:
    """Whether `flag` holds on any rank (a stop asked on one rank stops every rank after the same epoch)."""
    return bool(comm.allreduce_sum(np.array([float(flag)]))[0] > 0)


def masks_from_rank0(comm: Communicator, masks: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Rank 0's pruning masks on every rank (the other ranks pass None)."""
    shared = comm.broadcast_object(masks, "hvdtrain.masks")
    assert shared is not None, "rank 0 passes the masks"
    return shared


def gather(comm: Communicator, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (steps taken, mask digests, profile totals)."""
    return comm.allgather_object(value)
