"""Elastic rollback bookkeeping, in-process: the whole loop (hvdtrain.training.loop.train) runs as under an
elastic launch, with Horovod's run_fn and ElasticState replaced by fake_backend.run_elastic_simulated (same
save/restore/sync semantics) and a peer failure injected as an exception from the backend.

What is checked: after a rollback the loop's TrainingState (epoch, position, step, sums, history) and the
backend's weights are those of the last commit, metrics.jsonl and steps.jsonl are rewound to it, and the
replayed run ends with the uninterrupted run's weights; after a reset to a smaller world the rest of the
epoch is resharded and the LR rescaled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_arrays import arrays
from fake_backend import FakeBackend, FakeCommunicator, FakeElasticState, run_elastic_simulated

import hvdtrain.training.loop as loop
from hvdtrain.callbacks import Callback, CallbackContext, CallbackList
from hvdtrain.config import Config, load_config
from hvdtrain.data import load_dataset

SEED = 42
TRAIN_SAMPLES = 80
STEPS_PER_EPOCH = 10  # 80 // 8
BASE = ["run.progress=off", "run.tensorboard=false", "data.name=synthetic", "data.synthetic_samples=100",
        "data.synthetic_shape=[4,4,1]", "data.num_classes=3", f"seed={SEED}", "train.batch_size=8",
        "train.epochs=3", "checkpoint.every_epochs=1", "run.log_every_steps=1", "elastic.commit_every_steps=4"]


def _load(cfg: Any, seed: int) -> Any:
    """The dataset read whole into arrays (float32 pixels), as the assertions want them."""
    return arrays(load_dataset(cfg, seed))


def make_cfg(run_dir: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.dir={run_dir}", *BASE, *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Entries(Callback):
    """Records, at every (re)entry of Engine.run (on_train_begin comes after the rewind), what the run
    directory's logs say, the loop's state and the backend's weights."""

    def __init__(self, backend: FakeBackend, states: list[FakeElasticState]) -> None:
        self.backend, self.states = backend, states
        self.seen: list[dict[str, Any]] = []

    def on_train_begin(self, ctx: CallbackContext) -> None:
        self.seen.append({
            "metrics_epochs": [r["epoch"] for r in read_jsonl(ctx.run_dir / "metrics.jsonl")],
            "logged_steps": [r["step"] for r in read_jsonl(ctx.run_dir / "steps.jsonl")],
            "state": self.states[0].training.copy(),
            "weights": self.backend.weights(),
        })


def run_elastic(monkeypatch: pytest.MonkeyPatch, cfg: Config, backend: FakeBackend) -> tuple[dict, Entries,
                                                                                          FakeElasticState]:
    """loop.train under a simulated elastic launch; returns the summary, the entry probe and the state."""
    states: list[FakeElasticState] = []
    probe = Entries(backend, states)
    monkeypatch.setattr(loop, "elastic_launch", lambda: True)
    monkeypatch.setattr(loop, "run_elastic", lambda body, training, b: run_elastic_simulated(body, training, b, states))
    monkeypatch.setattr(CallbackList, "from_config", classmethod(lambda cls, c: cls(c, [probe])))
    summary = loop.train(cfg, backend)
    return summary, probe, states[0]


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_failure_mid_epoch_rolls_back_to_the_last_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits every 4 steps and at epoch ends: a peer fails during step 15 (epoch 2), after steps 13 and 14
    were taken and logged; the loop returns to the commit of step 12 and replays 13 and 14."""
    whole = FakeBackend()
    loop.train(make_cfg(tmp_path / "whole"), whole)

    backend = FakeBackend(fail_at={"train_step": 15})
    summary, probe, state = run_elastic(monkeypatch, make_cfg(tmp_path / "elastic"), backend)

    # Commits every 4 steps and at epoch ends (not both at step 20), and the save of the sync after the reset.
    assert [s for s, _, _ in state.commits if s > 0] == [4, 8, 10, 12, 12, 16, 20, 24, 28, 30]
    assert len(state.restores) == 1 and len(probe.seen) == 2
    back = probe.seen[1]["state"]
    assert (back.epoch, back.step, back.position) == (1, 12, 2 * 8)
    assert back.started and not back.stopped_early
    # The partial sums of the commit: steps 11 and 12, folded before it.
    stats, correct = backend.step_stats[10:12], backend.step_correct[10:12]
    assert back.sums == pytest.approx({"loss": sum(s.loss_sum for s in stats), "accuracy.correct": sum(correct),
                                       "count": 16, "skipped": 0}, rel=1e-12)
    assert [r["epoch"] for r in back.history] == [1]
    assert_same_weights(probe.seen[1]["weights"], backend.trajectory[11])  # the weights after step 12
    # What was logged after the commit (steps 13, 14) is gone when the loop re-enters.
    assert probe.seen[1]["logged_steps"] == list(range(1, 13))
    assert probe.seen[1]["metrics_epochs"] == [1]

    assert backend.lrs == whole.lrs[:14] + whole.lrs[12:]
    assert_same_weights(backend.weights(), whole.weights())
    assert summary["steps"] == 30 and summary["elastic"] is True
    assert [s["step"] for s in read_jsonl(tmp_path / "elastic" / "steps.jsonl")] == list(range(1, 31))
    ref = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "elastic" / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [1, 2, 3]
    for mine, theirs in zip(got, ref, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-12)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-12)


def test_a_failure_after_an_epoch_ended_drops_its_metrics_record(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure comes while writing epoch 2's checkpoint, after the epoch's record reached metrics.jsonl
    but before the epoch-end commit: the loop goes back to the commit of step 16, inside epoch 2, and its
    record is written again only once the epoch is done again."""
    backend = FakeBackend(fail_at={"save": 2})
    summary, probe, state = run_elastic(monkeypatch, make_cfg(tmp_path / "run"), backend)

    back = probe.seen[1]["state"]
    assert (back.epoch, back.step, back.position) == (1, 16, 6 * 8)
    assert [r["epoch"] for r in back.history] == [1]
    assert probe.seen[1]["metrics_epochs"] == [1]
    assert probe.seen[1]["logged_steps"] == list(range(1, 17))
    assert_same_weights(probe.seen[1]["weights"], backend.trajectory[15])
    assert len(backend.lrs) == 30 + 4  # steps 17..20 again
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert summary["epochs"] == 3 and summary["steps"] == 30
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*")) == ["epoch-0002", "epoch-0003"]


def test_a_smaller_world_after_the_reset_reshards_the_epoch_and_rescales_the_lr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 ranks x batch 8, cosine LR from 0.05 x 2 over 3 x 5 steps: a peer dies during step 4, the commit
    is step 2 (sample 32). One rank goes on: the rest of epoch 1, samples 32..79 of its order, in 6 steps of
    8, on the one-rank schedule (docs/long-runs.md): LR 0.05 x 1 over 3 x 10 steps, from t = 32 // 8 = 4."""
    cfg = make_cfg(tmp_path / "run", "elastic.commit_every_steps=2", "optim.schedule=cosine")
    backend = FakeBackend(FakeCommunicator(size=2, size_after_reset=1), fail_at={"train_step": 4})
    summary, probe, _ = run_elastic(monkeypatch, cfg, backend)

    back = probe.seen[1]["state"]
    assert (back.epoch, back.step, back.position) == (0, 2, 32)
    def cosine(peak: float, t: int, total: int) -> float:
        return peak * (1 + math.cos(math.pi * t / total)) / 2

    expected = [cosine(0.1, t, 15) for t in range(3)] + [cosine(0.05, t, 30) for t in range(4, 30)]
    np.testing.assert_allclose(backend.lrs, expected, rtol=1e-12, atol=0)
    dataset = _load(cfg.data, cfg.seed)
    epoch0 = np.random.default_rng([SEED, 0]).permutation(TRAIN_SAMPLES)
    for k, window in enumerate(backend.windows[3:9]):
        (x, y), = window
        idx = epoch0[32 + 8 * k:40 + 8 * k]
        np.testing.assert_array_equal(x, dataset.x_train[idx])
        np.testing.assert_array_equal(y, dataset.y_train[idx])
    assert summary["steps"] == 2 + 6 + 2 * STEPS_PER_EPOCH
    assert summary["world_size"] == 1
    assert [r["world_size"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 1, 1]


def test_a_failure_before_the_first_commit_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer fails during step 3, before the first commit (step 4). The only commit is the one made before
    the loop started, so the loop re-enters as a fresh start, in a run.dir it has already created."""
    whole = FakeBackend()
    loop.train(make_cfg(tmp_path / "whole"), whole)
    backend = FakeBackend(fail_at={"train_step": 3})
    summary, _, _ = run_elastic(monkeypatch, make_cfg(tmp_path / "elastic"), backend)
    assert summary["steps"] == 30
    assert_same_weights(backend.weights(), whole.weights())
