"""Facts about the process's surroundings: launcher, usable cores, threads per rank."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hvdtrain.config import HorovodConfig

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


def horovod_settings(cfg: HorovodConfig, profile: bool = False) -> dict[str, str]:
    """The HOROVOD_* variables a `horovod` config section sets (read by hvd.init()); unset keys leave the
    environment, and so Horovod's defaults or the user's own variables, alone. The timeline (horovod.timeline,
    or run.profile's) is started after init instead, once the run directory exists."""
    settings: dict[str, str] = {}
    if cfg.fusion_threshold_mb is not None:
        settings["HOROVOD_FUSION_THRESHOLD"] = str(int(cfg.fusion_threshold_mb * 1024 * 1024))
    if cfg.cycle_time_ms is not None:
        settings["HOROVOD_CYCLE_TIME"] = f"{cfg.cycle_time_ms:g}"
    if cfg.timeline is not None or profile:
        settings["HOROVOD_TIMELINE"] = "DYNAMIC"  # the file is named later, by hvd.start_timeline
    if cfg.autotune:
        settings["HOROVOD_AUTOTUNE"] = "1"
    if cfg.stall_check_time_s is not None:
        settings["HOROVOD_STALL_CHECK_TIME_SECONDS"] = f"{cfg.stall_check_time_s:g}"
    if cfg.stall_shutdown_time_s is not None:
        settings["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = f"{cfg.stall_shutdown_time_s:g}"
    return settings


def apply_horovod_settings(cfg: HorovodConfig, profile: bool = False) -> dict[str, str]:
    """Exports `horovod_settings(cfg, profile)` into this process's environment (before hvd.init()); returns
    them."""
    settings = horovod_settings(cfg, profile)
    os.environ.update(settings)
    return settings
