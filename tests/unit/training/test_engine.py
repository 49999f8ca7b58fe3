"""The training loop (hvdtrain/training/loop.py, engine.py) run in-process on a numpy backend and a simulated
world (fake_backend.py): accumulation windows and sharding, the LR of every step, the early-stopping vote,
checkpoint cadence and exact resume. No framework and no Horovod is imported; the expected numbers are
written from the formulas of docs/policy.md and the sharding contract, not taken from the code under test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_arrays import arrays
from fake_backend import FakeBackend, FakeCommunicator, InjectedFailure

from hvdtrain.backend import Backend
from hvdtrain.config import Config, load_config
from hvdtrain.data import load_dataset, plan_epoch
from hvdtrain.distributed.communicator import Communicator
from hvdtrain.training.loop import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SEED = 42
TRAIN_SAMPLES = 80  # data.synthetic_samples=100 with the default data.val_fraction=0.2
BASE = ["run.progress=off", "run.tensorboard=false", "data.name=synthetic", "data.synthetic_samples=100",
        "data.synthetic_shape=[4,4,1]", "data.num_classes=3", f"seed={SEED}", "train.batch_size=4",
        "train.epochs=2", "checkpoint.every_epochs=0"]


def _load(cfg: Any, seed: int) -> Any:
    """The dataset read whole into arrays (float32 pixels), as the assertions want them."""
    return arrays(load_dataset(cfg, seed))


def make_cfg(run_dir: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.dir={run_dir}", *BASE, *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def order(epoch: int) -> np.ndarray:
    """The epoch's global sample order (README "Data and sharding")."""
    return np.random.default_rng([SEED, epoch]).permutation(TRAIN_SAMPLES)


def test_fakes_satisfy_the_protocol() -> None:
    backend = FakeBackend()
    assert isinstance(backend, Backend)
    assert isinstance(backend.comm, Communicator)


def test_the_loop_imports_no_framework(tmp_path: Path) -> None:
    """One whole run in a fresh interpreter: neither torch, TensorFlow, Keras nor Horovod gets imported."""
    script = f"""
import sys
from fake_backend import FakeBackend, FakeCommunicator
from hvdtrain.config import load_config
from hvdtrain.training.loop import train
cfg = load_config(None, {[f"run.dir={tmp_path / 'run'}", *BASE]!r})
summary = train(cfg, FakeBackend(FakeCommunicator(size=2)))
assert summary["steps"] == 20, summary["steps"]
print("FRAMEWORKS", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "keras", "horovod")))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FRAMEWORKS []" in proc.stdout, proc.stdout[-2000:]


# --- 1. accumulation windows and sharding ---------------------------------------------------------------
def test_accumulation_windows_are_whole_and_hold_the_shards_samples_in_order(tmp_path: Path) -> None:
    """2 simulated ranks x batch 4 x accumulation 3 = 24 samples per optimizer step: 80 // 24 = 3 steps an
    epoch, each one train_step over exactly 3 micro-batches of 4, rank 0's slices of the epoch's order."""
    cfg = make_cfg(tmp_path / "run", "policy.accumulation_steps=3", "run.log_every_steps=1")
    backend = FakeBackend(FakeCommunicator(size=2))
    summary = train(cfg, backend)

    steps_per_epoch = TRAIN_SAMPLES // (2 * 4 * 3)
    assert steps_per_epoch == 3
    dataset = _load(cfg.data, cfg.seed)
    assert len(dataset.y_train) == TRAIN_SAMPLES
    assert len(backend.windows) == 2 * steps_per_epoch
    for epoch in range(2):
        plan = plan_epoch(TRAIN_SAMPLES, rank=0, world_size=2, batch_size=4, seed=SEED, epoch=epoch,
                          accumulation_steps=3)
        assert plan.steps == steps_per_epoch
        windows = backend.windows[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
        seen = []
        for step, window in enumerate(windows):
            assert len(window) == 3
            for micro, (x, y) in enumerate(window):
                g = (step * 3 + micro) * 8  # global micro-step start; rank 0 takes the first 4 of each 8
                idx = order(epoch)[g:g + 4]
                np.testing.assert_array_equal(x, dataset.x_train[idx])
                np.testing.assert_array_equal(y, dataset.y_train[idx])
                seen.append(idx)
        np.testing.assert_array_equal(np.concatenate(seen), plan.indices)

    assert summary["steps"] == summary["steps_per_rank"][0] == 6
    assert summary["global_batch_size"] == 24 and summary["accumulation_steps"] == 3
    assert summary["scaled_lr"] == pytest.approx(0.05 * 2 * 3)
    assert summary["stopped_early"] is False and summary["epochs"] == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "steps.jsonl")] == [1, 2, 3, 4, 5, 6]
    # Each epoch's train_loss is the mean over its windows (the mirrored ranks leave means unchanged).
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for epoch, record in enumerate(records):
        stats = backend.step_stats[epoch * 3:(epoch + 1) * 3]
        assert record["train_loss"] == pytest.approx(sum(s.loss_sum for s in stats) / sum(s.count for s in stats),
                                                     rel=1e-12)
        assert record["world_size"] == 2


# --- 2. the LR of every step --------------------------------------------------------------------------
def _cosine(t: int, total: int) -> float:
    r = 0.1
    return r + (1 - r) * (1 + math.cos(math.pi * t / total)) / 2


@pytest.mark.parametrize(("schedule", "extra", "multiplier", "decay"), [
    ("cosine", ["optim.cosine_min_ratio=0.1"], 4.0, _cosine),
    ("step", ["optim.step_milestones=[1.0, 2.4]", "optim.step_gamma=0.5"], 4.0,
     lambda t, total: 0.5 ** sum(1 for m in (1.0, 2.4) if t / 5 >= m)),
    ("constant", ["policy.lr_scaling=none"], 1.0, lambda t, total: 1.0),
])
def test_every_step_gets_the_lr_of_the_formula(tmp_path: Path, schedule: str, extra: list[str], multiplier: float,
                                               decay) -> None:  # noqa: ANN001
    """docs/policy.md: lr(t) = warmup(t) x decay(t), warmup from base to peak = base x world x accumulation
    over W = round(warmup_epochs x S) steps. 2 ranks x batch 4 x accumulation 2: S = 80 // 16 = 5, T = 15,
    W = round(1.4 x 5) = 7."""
    cfg = make_cfg(tmp_path / "run", "train.epochs=3", "optim.lr=0.1", f"optim.schedule={schedule}",
                   "policy.accumulation_steps=2", "policy.warmup_epochs=1.4", "run.log_every_steps=1", *extra)
    backend = FakeBackend(FakeCommunicator(size=2))
    summary = train(cfg, backend)

    base, peak, total, warm = 0.1, 0.1 * multiplier, 15, 7
    expected = [(base + (peak - base) * t / warm if t < warm else peak) * decay(t, total) for t in range(total)]
    assert len(backend.lrs) == total
    np.testing.assert_allclose(backend.lrs, expected, rtol=1e-12, atol=0)
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, total + 1))
    np.testing.assert_allclose([s["lr"] for s in steps], expected, rtol=1e-12, atol=0)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    np.testing.assert_allclose([r["lr"] for r in records], [expected[4], expected[9], expected[14]], rtol=1e-12)
    assert summary["scaled_lr"] == pytest.approx(peak)


# --- 3. the early-stopping vote -----------------------------------------------------------------------
@pytest.mark.parametrize(("min_delta", "stop_after"), [(0.05, 4), (0.0, 7)])
def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path: Path, min_delta: float,
                                                                        stop_after: int) -> None:
    """val_loss by epoch 1.0, 0.8, 0.78, 0.77, 0.5, 0.6, 0.7, ...; patience 2. With min_delta 0.05 epochs
    3 and 4 are no improvement (stop after 4); with 0, epochs 6 and 7 are the first two (stop after 7)."""
    losses = [1.0, 0.8, 0.78, 0.77, 0.5, 0.6, 0.7, 0.65, 0.62, 0.61]
    cfg = make_cfg(tmp_path / "run", "train.epochs=10", "train.eval_batch_size=256",
                   "callbacks.early_stopping_metric=val_loss", "callbacks.early_stopping_patience=2",
                   f"callbacks.early_stopping_min_delta={min_delta}", "checkpoint.every_epochs=3")
    comm = FakeCommunicator(size=1)
    backend = FakeBackend(comm, eval_losses=losses)
    summary = train(cfg, backend)

    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert summary["stopped_early"] is True
    assert summary["epochs"] == len(records) == stop_after
    assert [r["val_loss"] for r in records] == pytest.approx(losses[:stop_after])
    assert len(backend.windows) == summary["steps"] == stop_after * (TRAIN_SAMPLES // 4)
    assert comm.votes == stop_after
    # The epoch it stops after gets a checkpoint, as the last epoch does (keep_last 2).
    every3 = [e for e in range(1, stop_after) if e % 3 == 0]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch-*")) == \
        [f"epoch-{e:04d}" for e in [*every3, stop_after][-2:]]


def test_a_stop_asked_by_another_rank_stops_this_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No callback here asks to stop; the other rank votes to stop at the end of epoch 2: the run ends
    there, with metrics.jsonl, the summary and the steps taken agreeing."""
    cfg = make_cfg(tmp_path / "run", "train.epochs=5", "run.progress=lines")
    comm = FakeCommunicator(size=2, other_ranks_stop_at=[2])
    backend = FakeBackend(comm)
    summary = train(cfg, backend)

    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert summary["stopped_early"] is True
    assert summary["epochs"] == len(records) == 2
    assert len(backend.windows) == summary["steps"] == 2 * (TRAIN_SAMPLES // 8)
    assert [payload for name, payload in comm.calls if name == "allreduce_sum" and len(payload) == 1] == \
        [[0.0], [0.0]]  # this rank's own votes: never
    assert "stopping after epoch 2, asked by a callback on another rank" in capsys.readouterr().out


# --- 4. checkpoint cadence and exact resume -----------------------------------------------------------
@pytest.mark.parametrize(("every_epochs", "every_steps", "keep_last", "written"), [
    # S = 80 // 13 = 6 steps an epoch, 18 in all. Steps that end an epoch get no mid-epoch checkpoint, even
    # when that epoch end gets none either (every_epochs=2: step 6).
    (2, 3, 0, ["epoch-0000-step-00000003", "epoch-0001-step-00000009", "epoch-0002", "epoch-0002-step-00000015",
               "epoch-0003"]),
    (1, 4, 3, ["epoch-0000-step-00000004", "epoch-0001", "epoch-0001-step-00000008", "epoch-0002",
               "epoch-0002-step-00000016", "epoch-0003"]),
])
def test_checkpoints_are_written_and_kept_on_their_cadence(tmp_path: Path, every_epochs: int, every_steps: int,
                                                           keep_last: int, written: list[str]) -> None:
    cfg = make_cfg(tmp_path / "run", "train.epochs=3", "train.batch_size=13", f"checkpoint.every_epochs={every_epochs}",
                   f"checkpoint.every_steps={every_steps}", f"checkpoint.keep_last={keep_last}",
                   "checkpoint.best_metric=val_loss")
    backend = FakeBackend()
    train(cfg, backend)

    # Every checkpoint is filled under a hidden temporary name ".<final name>.XXXX" and then renamed.
    assert [p.name.split(".")[1] for kind, p in backend.saves if kind == "checkpoint"] == written
    root = tmp_path / "run" / "checkpoints"
    kept = written[-keep_last:] if keep_last else written
    assert sorted(p.name for p in root.iterdir() if p.name != "best") == kept
    for name in kept:
        manifest = json.loads((root / name / "manifest.json").read_text())
        epoch, _, step = name.removeprefix("epoch-").partition("-step-")
        state = manifest["state"]
        steps_done = int(step) if step else int(epoch) * 6
        assert (state["epoch"], state["step"]) == (int(epoch), steps_done)
        assert state["position"] == (steps_done - int(epoch) * 6) * 13
        assert len(state["history"]) == int(epoch)
        assert manifest["files"] == ["state.npz"]
    # best: the lowest val_loss among the epochs that got an epoch-end checkpoint.
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    checkpointed = [r for r in records if f"epoch-{r['epoch']:04d}" in written]
    best = min(checkpointed, key=lambda r: r["val_loss"])
    assert json.loads((root / "best" / "manifest.json").read_text())["epoch"] == best["epoch"]


def test_max_steps_sets_the_epochs_and_warmup_steps_ramp_from_zero(tmp_path: Path) -> None:
    """train.max_steps=12 at S = 5 steps an epoch (2 ranks x batch 4 x accumulation 2 over 80 samples): epochs 1
    and 2 whole, epoch 3 cut after 2 steps (train.epochs=2 is not used). policy.warmup_steps=3 ramps from zero:
    lr(t) = peak x (t + 1) / 4 for t < 3; cosine then decays over steps 3..12 to 0.1 x peak."""
    cfg = make_cfg(tmp_path / "run", "train.max_steps=12", "optim.lr=0.1", "optim.schedule=cosine",
                   "optim.cosine_min_ratio=0.1", "policy.accumulation_steps=2", "policy.warmup_steps=3",
                   "run.log_every_steps=1", "checkpoint.every_epochs=1")
    backend = FakeBackend(FakeCommunicator(size=2))
    summary = train(cfg, backend)

    peak, total, warm = 0.1 * 4, 12, 3
    expected = [peak * (t + 1) / (warm + 1) if t < warm
                else peak * (0.1 + 0.9 * (1 + math.cos(math.pi * (t - warm) / (total - warm))) / 2)
                for t in range(total)]
    np.testing.assert_allclose(backend.lrs, expected, rtol=1e-12, atol=0)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and summary["steps"] == 12
    assert len(backend.windows) == 12
    assert (tmp_path / "run" / "checkpoints" / "epoch-0003").is_dir()  # the cut epoch is the last: saved


def test_a_run_of_max_steps_resumes_exactly_in_its_cut_epoch(tmp_path: Path) -> None:
    """One rank, batch 8: 10 steps an epoch; train.max_steps=23 cuts epoch 3 after 3 steps. Killed during step
    23, resumed from the mid-epoch checkpoint of step 21: the uninterrupted run's windows and LRs."""
    opts = ["train.batch_size=8", "train.max_steps=23", "checkpoint.every_steps=3", "checkpoint.keep_last=0",
            "optim.schedule=cosine", "policy.warmup_steps=5", "run.log_every_steps=1"]
    whole = FakeBackend()
    train(make_cfg(tmp_path / "whole", *opts), whole)
    assert len(whole.lrs) == 23

    cfg = make_cfg(tmp_path / "cut", *opts, "train.resume=auto")
    with pytest.raises(InjectedFailure):
        train(cfg, FakeBackend(fail_at={"train_step": 23}))
    resumed = FakeBackend()
    summary = train(cfg, resumed)
    assert resumed.loads == [("checkpoint", tmp_path / "cut" / "checkpoints" / "epoch-0002-step-00000021")]
    assert resumed.lrs == whole.lrs[21:] and summary["steps"] == 23
    for key, value in whole.weights().items():
        np.testing.assert_array_equal(resumed.weights()[key], value)


@pytest.mark.parametrize(("killed_at_step", "resumed_from"), [(17, "epoch-0001-step-00000016"), (21, "epoch-0002")])
def test_resume_auto_continues_exactly_where_the_checkpoint_left(tmp_path: Path, killed_at_step: int,
                                                                 resumed_from: str) -> None:
    """A run killed during step 17 (or 21) and resumed with train.resume=auto takes the uninterrupted run's
    windows and LRs from the checkpoint's step on, and ends with bitwise the same weights and metrics."""
    opts = ["train.epochs=3", "train.batch_size=8", "checkpoint.every_epochs=1", "checkpoint.every_steps=4",
            "checkpoint.keep_last=0", "run.log_every_steps=1", "optim.schedule=cosine", "policy.warmup_epochs=0.5"]
    whole = FakeBackend()
    train(make_cfg(tmp_path / "whole", *opts), whole)
    assert len(whole.lrs) == 30

    cfg = make_cfg(tmp_path / "cut", *opts, "train.resume=auto")
    with pytest.raises(InjectedFailure):
        train(cfg, FakeBackend(fail_at={"train_step": killed_at_step}))
    resumed = FakeBackend()
    summary = train(cfg, resumed)

    done = killed_at_step - 1  # the checkpoint's step
    assert resumed.loads == [("checkpoint", tmp_path / "cut" / "checkpoints" / resumed_from)]
    assert resumed.lrs == whole.lrs[done:]
    assert len(resumed.windows) == 30 - done
    for mine, theirs in zip(resumed.windows, whole.windows[done:], strict=True):
        for (x, y), (x0, y0) in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)
    for key, value in whole.weights().items():
        np.testing.assert_array_equal(resumed.weights()[key], value)
    assert summary["steps"] == 30

    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "world_size")
    cut, ref = read_jsonl(tmp_path / "cut" / "metrics.jsonl"), read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert [{k: r[k] for k in keys} for r in cut] == [{k: r[k] for k in keys} for r in ref]
    steps = read_jsonl(tmp_path / "cut" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 31))
    assert [s["lr"] for s in steps] == [s["lr"] for s in read_jsonl(tmp_path / "whole" / "steps.jsonl")]
