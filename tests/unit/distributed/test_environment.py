"""The process's surroundings: which GPU a rank takes, and the HOROVOD_*/NCCL_* settings of a `horovod` section."""

from __future__ import annotations

import os

import pytest

from hvdtrain.config import load_config
from hvdtrain.distributed.environment import (
    ONE_RANK_CYCLE_TIME_MS,
    apply_horovod_settings,
    gpu_for_rank,
    horovod_settings,
    launch_world_size,
    threads_for_rank,
)
from hvdtrain.errors import UserError


def test_one_gpu_per_local_rank() -> None:
    assert [gpu_for_rank(r, 4, 4) for r in range(4)] == [0, 1, 2, 3]
    assert [gpu_for_rank(r, 2, 8) for r in range(2)] == [0, 1]  # more GPUs than ranks: the first ones
    assert [gpu_for_rank(r, 4, 1) for r in range(4)] == [0, 0, 0, 0]  # the launcher gave each rank its own
    with pytest.raises(UserError, match=r"8 ranks on this node but 4 GPUs visible: start at most 4 ranks"):
        gpu_for_rank(5, 8, 4)


def test_gpu_and_nccl_knobs_become_environment_variables() -> None:
    cfg = load_config(None, ["horovod.hierarchical_allreduce=true", "horovod.hierarchical_allgather=false",
                             "horovod.nccl_socket_ifname=^lo,docker0", "horovod.nccl_ib_disable=true",
                             "horovod.nccl_debug=WARN"]).horovod
    assert horovod_settings(cfg) == {"HOROVOD_HIERARCHICAL_ALLREDUCE": "1", "HOROVOD_HIERARCHICAL_ALLGATHER": "0",
                                     "NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "^lo,docker0",
                                     "NCCL_DEBUG": "WARN"}
    assert horovod_settings(load_config(None, []).horovod) == {}  # unset: the environment's own values stand


LAUNCH_VARIABLES = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "HOROVOD_RANK",
                    "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK",
                    "JSM_NAMESPACE_RANK", "ALPS_APP_PE", "PALS_RANKID", "HOROVOD_ELASTIC", "HOROVOD_CYCLE_TIME")


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process started without a launcher; variables the test sets (or apply_horovod_settings exports) are
    undone afterwards."""
    for variable in LAUNCH_VARIABLES:
        monkeypatch.setenv(variable, "x")  # recorded as unset before: undone at teardown whatever is written
        monkeypatch.delenv(variable)
    return monkeypatch


def test_the_world_size_before_init(no_launcher: pytest.MonkeyPatch) -> None:
    assert launch_world_size() == 1  # no launcher: a singleton
    no_launcher.setenv("PMIX_RANK", "3")
    assert launch_world_size() is None  # a launcher that does not say how many
    no_launcher.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert launch_world_size() == 2
    no_launcher.setenv("HOROVOD_ELASTIC", "1")
    assert launch_world_size() is None  # elastic: it changes


def test_one_rank_gets_a_slow_cycle_unless_one_is_set(no_launcher: pytest.MonkeyPatch) -> None:
    unset = load_config(None, []).horovod
    assert apply_horovod_settings(unset) == {"HOROVOD_CYCLE_TIME": f"{ONE_RANK_CYCLE_TIME_MS:g}"}
    assert os.environ["HOROVOD_CYCLE_TIME"] == "20"
    assert apply_horovod_settings(unset) == {}  # the environment's value now stands
    no_launcher.delenv("HOROVOD_CYCLE_TIME")
    assert apply_horovod_settings(load_config(None, ["horovod.cycle_time_ms=3"]).horovod) == {"HOROVOD_CYCLE_TIME": "3"}
    no_launcher.delenv("HOROVOD_CYCLE_TIME")
    no_launcher.setenv("HOROVOD_SIZE", "1")  # horovodrun -np 1
    assert apply_horovod_settings(unset) == {"HOROVOD_CYCLE_TIME": "20"}
    no_launcher.delenv("HOROVOD_CYCLE_TIME")
    no_launcher.setenv("HOROVOD_SIZE", "2")
    assert apply_horovod_settings(unset) == {}  # Horovod's default (1 ms) where collectives cross ranks


def test_threads_per_rank_come_from_the_config_then_omp_num_threads_then_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_for_rank(0, 2) == 4  # an equal share of the node's cores
    assert threads_for_rank(3, 2) == 3  # train.threads_per_rank wins
    for value, expected in [("1", 1), ("6", 6), ("2,1", 2), ("0", 4), ("many", 4), ("", 4)]:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert threads_for_rank(0, 2) == expected, value  # a positive count (its first level) is taken
        assert threads_for_rank(5, 2) == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3})
    assert threads_for_rank(0, 2) == 1  # the launcher bound this rank to one core
