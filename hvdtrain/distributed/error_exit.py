"""How a rank ends on a user error under a launcher: every rank's line is out before any rank exits.

mpirun, horovodrun and srun stop the whole job as soon as one rank exits non-zero, so a rank that exits right
after printing its error can cut off a slower rank's line (seen: rank 1 exited first and mpirun aborted rank 0
before it had printed). So a rank that stops on a `UserError` under a launcher writes its line, flushes, and then
waits at a Horovod barrier until every rank has written its own; only then does it exit.

- Errors found during a command (bad data agreed on by a collective, different configs, a refused option) happen
  while Horovod runs: the barrier is on the running communicator (`ending_with_errors_reported`).
- Errors found before Horovod starts (config keys, paths) are checked identically on every rank from the same
  input: the rank starts the Horovod of the framework that input names (torch where it names none) just for the
  barrier, a few seconds spent on the error path only (`wait_for_every_rank_before_start`).
- A rank alone in its error (the others went on) gives up waiting after `BARRIER_TIMEOUT_S` and exits; the
  launcher then stops the rest. Its line is out either way.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hvdtrain.errors import JobAborted, UserError

if TYPE_CHECKING:
    from hvdtrain.distributed.communicator import Communicator

BARRIER_TIMEOUT_S = 30.0


def announce(exc: UserError) -> None:
    """Writes the error's one line to stderr, flushed, once however often it is called. One write of the line and
    its newline together: print() writes them apart, and with PYTHONUNBUFFERED=1 (usual under launchers) another
    rank's line could land between them on the launcher's shared stderr (seen: two ranks' lines on one line)."""
    if not exc.announced:
        sys.stderr.write(f"hvdtrain: error: {exc}\n")
        sys.stderr.flush()
        exc.announced = True


def _within(action: Callable[[], None], timeout_s: float) -> bool:
    """Runs `action` in a daemon thread; True if it returned within `timeout_s` (a collective that a peer never
    joins would otherwise hold the rank forever)."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        except Exception:  # noqa: BLE001 - Horovod already down (a peer died): nothing to wait for
            return
        done.set()

    threading.Thread(target=run, name="hvdtrain-error-barrier", daemon=True).start()
    return done.wait(timeout_s)


def wait_for_every_rank(exc: UserError, comm: Communicator, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Announces `exc`, then waits at `comm`'s barrier for every rank (Horovod running)."""
    announce(exc)
    if exc.waits_for_peers and not exc.peers_waited and comm.running():
        _within(comm.barrier, timeout_s)
    exc.peers_waited = True


def wait_for_every_rank_before_start(exc: UserError, backend_name: str,
                                     timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Announces `exc`, then starts the named framework's Horovod and waits at its barrier for every rank."""
    announce(exc)
    if not exc.waits_for_peers or exc.peers_waited:
        return

    def start_and_wait() -> None:
        from hvdtrain.backend import get_backend

        comm = get_backend(backend_name).comm
        comm.init()
        comm.barrier()
        comm.shutdown()

    _within(start_and_wait, timeout_s)
    exc.peers_waited = True


@contextmanager
def ending_with_errors_reported(comm: Communicator, keep_running: bool = False) -> Iterator[None]:
    """Shuts Horovod down at the end of a command (with `keep_running`, only when it fails: Horovod then stays up
    for the process's next run and is shut down at exit by its own atexit handler); a UserError on the way out is
    first announced and waited for on every rank (see the module docstring). A collective that failed because
    another rank stalled or failed becomes a one-line JobAborted."""
    failed = True
    try:
        try:
            yield
        except Exception as exc:
            if isinstance(exc, UserError) or not comm.is_collective_failure(exc):
                raise
            raise JobAborted("Horovod shut the job down: a collective could not complete because another rank "
                             "stalled (longer than horovod.stall_shutdown_time_s; Horovod's stall report above "
                             "names it) or failed: read that rank's log") from None
        failed = False
    except UserError as exc:
        wait_for_every_rank(exc, comm)
        raise
    finally:
        if failed or not keep_running:
            comm.shutdown()
