"""The policy's derived numbers, its checks against the world, LR schedules and Horovod settings (no
collectives here; tests/distributed/test_policy.py runs them under real launchers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hvdtrain.config import HorovodConfig, load_config
from hvdtrain.data import plan_epoch
from hvdtrain.distributed.communicator import World
from hvdtrain.distributed.environment import horovod_settings
from hvdtrain.errors import ConfigError
from hvdtrain.training.policy import lr_multiplier, resolve_policy
from hvdtrain.training.schedule import LRSchedule


def world(size: int, controller: str = "mpi", local_size: int | None = None) -> World:
    return World(rank=0, size=size, local_rank=0, local_size=local_size or size, controller=controller)


def test_linear_scaling_follows_the_global_batch() -> None:
    cfg = load_config(None, ["optim.lr=0.1", "train.batch_size=16", "policy.accumulation_steps=4"])
    policy = resolve_policy(cfg, world(8))
    assert policy.global_batch == 8 * 16 * 4
    assert policy.scaled_lr == pytest.approx(0.1 * 8 * 4)
    line = policy.describe()
    assert "8 rank(s) x micro-batch 16 x accumulation 4 = global batch 512" in line
    assert "LR 0.1 -> 3.2" in line and "precision fp32" in line and "compression none" in line


def test_adasum_uses_horovods_rule_and_none_keeps_the_lr() -> None:
    adasum = load_config(None, ["policy.reduce_op=adasum", "policy.accumulation_steps=2"])
    assert lr_multiplier(adasum, world(8, local_size=4), nccl_built=False) == 2.0
    assert lr_multiplier(adasum, world(8, local_size=4), nccl_built=True) == 8.0
    assert lr_multiplier(load_config(None, ["policy.lr_scaling=none"]), world(8)) == 1.0


@pytest.mark.parametrize(("size", "controller", "words"), [
    (2, "gloo", "needs Horovod's MPI controller"),
    (3, "mpi", "power-of-2 number of ranks, got 3"),
])
def test_adasum_refuses_worlds_it_cannot_run_on(size: int, controller: str, words: str) -> None:
    cfg = load_config(None, ["policy.reduce_op=adasum"])
    with pytest.raises(ConfigError, match=words):
        resolve_policy(cfg, world(size, controller))
    resolve_policy(cfg, world(4, "mpi"))  # fine


@pytest.mark.parametrize(("overrides", "words"), [
    (["policy.reduce_op=adasum", "policy.precision=fp16"], "cannot be combined with policy.precision=fp16"),
    (["policy.reduce_op=adasum", "policy.grad_clip_norm=1"], "cannot be combined with policy.grad_clip_norm"),
    (["policy.grad_clip_norm=0"], "must be above 0"),
    (["policy.accumulation_steps=0"], "below the minimum 1"),
    (["optim.schedule=linear"], "not one of constant, step, cosine"),
])
def test_incompatible_or_invalid_policies_are_config_errors(overrides: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_warmup_ramps_linearly_from_base_to_peak() -> None:
    s = LRSchedule(base_lr=0.1, peak_lr=0.8, warmup_steps=10, steps_per_epoch=5, total_steps=50)
    lrs = [s.at(t) for t in range(12)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.45)
    assert lrs[10] == lrs[11] == pytest.approx(0.8)
    assert np.all(np.diff(lrs[:11]) > 0)


def test_step_and_cosine_decay() -> None:
    step = LRSchedule(base_lr=1.0, peak_lr=1.0, warmup_steps=0, steps_per_epoch=10, total_steps=100, kind="step",
                      milestones=(2.0, 5.0), gamma=0.5)
    assert [step.at(t) for t in (0, 19, 20, 49, 50, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    cosine = LRSchedule(base_lr=1.0, peak_lr=2.0, warmup_steps=0, steps_per_epoch=10, total_steps=100,
                        kind="cosine", min_ratio=0.1)
    assert cosine.at(0) == pytest.approx(2.0)
    assert cosine.at(50) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert cosine.at(100) == pytest.approx(0.2)
    assert cosine.at(25) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))


def nanogpt_lr(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """nanoGPT's train.py `get_lr` (karpathy/nanoGPT 3adf61e), written out from its definition: a linear ramp
    learning_rate x (it + 1) / (warmup_iters + 1) below warmup_iters, then cosine from learning_rate down to min_lr
    over [warmup_iters, lr_decay_iters], min_lr after."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def test_warmup_steps_and_cosine_over_max_steps_give_nanogpts_lr_at_every_step() -> None:
    """The baby-GPT recipe of nanoGPT's README (lr 1e-3, 100 warm-up steps, cosine to 1e-4 over 2,000 steps),
    written as hvdtrain's config at one rank: the same LR at each of the 2,000 optimizer steps."""
    cfg = load_config(None, ["optim.lr=1e-3", "optim.schedule=cosine", "optim.cosine_min_ratio=0.1",
                             "policy.warmup_steps=100", "train.max_steps=2000"])
    schedule = LRSchedule.from_config(cfg.optim, cfg.optim.lr, cfg.policy.warmup_epochs, steps_per_epoch=37,
                                      epochs=55, warmup_steps=cfg.policy.warmup_steps, total_steps=cfg.train.max_steps)
    ours = np.array([schedule.at(t) for t in range(2000)])
    theirs = np.array([nanogpt_lr(t, 1e-3, 100, 2000, 1e-4) for t in range(2000)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    assert ours[0] == pytest.approx(1e-3 / 101) and ours[100] == pytest.approx(1e-3)
    assert ours[-1] == pytest.approx(1e-4, rel=1e-5)


def test_the_two_warmups_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="set one of them to 0"):
        load_config(None, ["policy.warmup_steps=10", "policy.warmup_epochs=1"])


def test_accumulation_plans_whole_windows_only() -> None:
    # 100 samples, 2 ranks x batch 4 x accumulation 3 = 24 per optimizer step: 4 steps, 4 samples left.
    plans = [plan_epoch(100, rank=r, world_size=2, batch_size=4, seed=0, epoch=0, accumulation_steps=3)
             for r in range(2)]
    assert [p.steps for p in plans] == [4, 4] and [p.micro_steps for p in plans] == [12, 12]
    assert plans[0].dropped == 4
    # Per optimizer step, the two ranks' micro-batches are exactly the samples one rank with batch 24 sees.
    single = plan_epoch(100, rank=0, world_size=1, batch_size=24, seed=0, epoch=0)
    for step in range(4):
        window = np.concatenate([p.indices[step * 12:(step + 1) * 12] for p in plans])
        assert sorted(window) == sorted(single.indices[step * 24:(step + 1) * 24])


def test_horovod_settings_become_environment_variables() -> None:
    settings = horovod_settings(HorovodConfig(fusion_threshold_mb=0.5, cycle_time_ms=2.5, timeline="t.json",
                                              autotune=True, stall_check_time_s=30, stall_shutdown_time_s=120))
    assert settings == {"HOROVOD_FUSION_THRESHOLD": str(512 * 1024), "HOROVOD_CYCLE_TIME": "2.5",
                        "HOROVOD_TIMELINE": "DYNAMIC", "HOROVOD_AUTOTUNE": "1",
                        "HOROVOD_STALL_CHECK_TIME_SECONDS": "30", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "120"}
    assert horovod_settings(HorovodConfig()) == {}
