"""Facts about the process's surroundings: launcher, usable cores, threads per rank."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hvdtrain.errors import ConfigError, UserError

if TYPE_CHECKING:
    from hvdtrain.config import HorovodConfig

# Set by horovodrun (Gloo), OpenMPI's mpirun, MPICH/Intel MPI (PMI) and SLURM's srun respectively.
_LAUNCHER_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
# A rank's own number, as launchers set it (the ones above, PMIx, MVAPICH, IBM's jsrun, Cray's ALPS and PALS):
# with any of these and no size above, the world size is not known before hvd.init.
_RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK",
              "JSM_NAMESPACE_RANK", "ALPS_APP_PE", "PALS_RANKID")
# Horovod's background thread wakes every HOROVOD_CYCLE_TIME ms (default 1) whether or not anything is pending.
# At one rank nothing is (the Communicator answers alone, the optimizer is not wrapped), and on a small machine
# those 1,000 wake-ups a second take a core from the compute threads: measured on 2 cores, the idle thread took
# 2.7% of a core at 1 ms, 0.4% at 20 ms (docs/performance.md). One rank gets this cycle time unless the user set one.
ONE_RANK_CYCLE_TIME_MS = 20


def under_launcher() -> bool:
    """True when a multi-process launcher started this process."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def launch_world_size() -> int | None:
    """The number of ranks started with this one, read before hvd.init: 1 without any launcher; None when a
    launcher started us without saying how many (or under elastic Horovod, where it changes)."""
    if os.environ.get("HOROVOD_ELASTIC") == "1":
        return None
    for variable in _LAUNCHER_VARS:
        if variable in os.environ:
            try:
                return int(os.environ[variable])
            except ValueError:
                return None
    return None if any(v in os.environ for v in _RANK_VARS) else 1


def usable_cores() -> int:
    """CPU cores this process may run on (respects affinity masks set by mpirun/SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def omp_num_threads() -> int | None:
    """OMP_NUM_THREADS as a thread count (its first level where it lists several), or None when unset or not a
    positive integer (then the cores decide, as without it)."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def threads_for_rank(requested: int, local_size: int) -> int:
    """CPU threads for one rank: `requested` if set; else OMP_NUM_THREADS if set (how torchrun and job scripts
    say it); all cores the launcher bound this rank to, if it bound it; otherwise an equal share of the node's
    cores, so ranks do not fight over them."""
    if requested > 0:
        return requested
    from_environment = omp_num_threads()
    if from_environment is not None:
        return from_environment
    allowed, total = usable_cores(), os.cpu_count() or 1
    if allowed < total:
        return allowed
    return max(1, total // max(1, local_size))


def horovod_settings(cfg: HorovodConfig, profile: bool = False) -> dict[str, str]:
    """The HOROVOD_* (and NCCL_*) variables a `horovod` config section sets (read by hvd.init()); unset keys leave the
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
    for key, variable in (("hierarchical_allreduce", "HOROVOD_HIERARCHICAL_ALLREDUCE"),
                          ("hierarchical_allgather", "HOROVOD_HIERARCHICAL_ALLGATHER"),
                          ("nccl_ib_disable", "NCCL_IB_DISABLE")):
        flag = getattr(cfg, key)
        if flag is not None:
            settings[variable] = "1" if flag else "0"
    if cfg.nccl_socket_ifname is not None:
        settings["NCCL_SOCKET_IFNAME"] = cfg.nccl_socket_ifname
    if cfg.nccl_debug is not None:
        settings["NCCL_DEBUG"] = cfg.nccl_debug
    return settings


def apply_horovod_settings(cfg: HorovodConfig, profile: bool = False, running: bool = False) -> dict[str, str]:
    """Exports `horovod_settings(cfg, profile)` into this process's environment (before hvd.init()); returns
    them. A process started alone (one rank) also gets HOROVOD_CYCLE_TIME=ONE_RANK_CYCLE_TIME_MS, unless
    horovod.cycle_time_ms or the environment sets one. With Horovod `running` already (a script's second
    hvdtrain.train), nothing is exported: the run must ask for what Horovod was started with (ConfigError if
    not), and gets what was exported then."""
    global _STARTED_WITH
    given = horovod_settings(cfg, profile)
    if running and _STARTED_WITH is not None:
        first, exported = _STARTED_WITH
        if given != first:
            raise ConfigError(f"horovod.* or run.profile differs from this process's first run (Horovod settings "
                              f"{given or 'none'} against {first or 'none'}): Horovod reads them once, when it "
                              "starts; train this run in a new process")
        return dict(exported)
    settings = dict(given)
    if "HOROVOD_CYCLE_TIME" not in settings and "HOROVOD_CYCLE_TIME" not in os.environ and launch_world_size() == 1:
        settings["HOROVOD_CYCLE_TIME"] = f"{ONE_RANK_CYCLE_TIME_MS:g}"
    os.environ.update(settings)
    _STARTED_WITH = (given, settings)
    return dict(settings)


# What the last run that started Horovod in this process asked for, and what it exported.
_STARTED_WITH: tuple[dict[str, str], dict[str, str]] | None = None


def gpu_for_rank(local_rank: int, local_size: int, visible: int) -> int:
    """The GPU (index among the visible ones) of a rank: one GPU per local rank. With as many GPUs visible as
    ranks on the node (or more), rank i takes GPU i; with one visible, the launcher gave each rank its own
    (CUDA_VISIBLE_DEVICES per rank, SLURM's --gpus-per-task=1)."""
    if visible >= local_size:
        return local_rank
    if visible == 1:
        return 0
    raise UserError(f"{local_size} ranks on this node but {visible} GPUs visible: start at most {visible} ranks per "
                    f"node (horovodrun -H host:{visible}, SLURM --ntasks-per-node={visible}), or give each rank one "
                    "GPU (CUDA_VISIBLE_DEVICES)")


def no_gpu_support_error(framework: str) -> UserError:
    """A rank that sees a GPU its Horovod cannot use (built without CUDA): the one-line error and its fixes."""
    return UserError(f"this node has a GPU but Horovod for {framework} was built without CUDA: run "
                     "`HVDTRAIN_DEVICE=cuda make setup` (docs/gpu.md), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to "
                     "train on the CPU")
