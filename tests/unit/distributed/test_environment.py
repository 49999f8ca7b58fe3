"""The process's surroundings: which GPU a rank takes, and the HOROVOD_*/NCCL_* settings of a `horovod` section."""

from __future__ import annotations

import pytest

from hvdtrain.config import load_config
from hvdtrain.distributed.environment import gpu_for_rank, horovod_settings
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
