"""Facts about the process's surroundings: launcher, usable cores, threads per rank."""

from __future__ import annotations

import os

# Set by horovodrun (Gloo), OpenMPI's mpirun, MPICH/Intel MPI (PMI) and SLURM's srun respectively.
_LAUNCHER_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")


def under_launcher() -> bool:
    """True when a multi-process launcher started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks set by mpirun/SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_for_rank(requested: int, local_size: int) -> int:
    """CPU threads for one rank: `requested` if set; all cores the launcher bound this rank to, if it
    bound it; otherwise an equal share of the node's cores, so ranks do not fight over them."""
    if requested > 0:
        return requested
    allowed, total = usable_cores(), os.cpu_count() or 1
    if allowed < total:
        return allowed
    return max(1, total // max(1, local_size))
