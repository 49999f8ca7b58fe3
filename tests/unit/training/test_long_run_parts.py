"""The framework-free parts of long runs: epochs that start mid-way, early stopping's rule, user callbacks
by import path, the training state, and checkpoint naming/pruning on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hvdtrain.callbacks import CallbackList, EarlyStopping, load_user_callback
from hvdtrain.config import load_config
from hvdtrain.data.sharding import plan_epoch
from hvdtrain.errors import CheckpointError, ConfigError
from hvdtrain.training.checkpoint import Checkpoint, Checkpointer, check_compatible, identity, newest
from hvdtrain.training.state import TrainingState


def test_an_epoch_resumed_mid_way_covers_exactly_the_remaining_samples() -> None:
    full = plan_epoch(100, rank=0, world_size=1, batch_size=8, seed=3, epoch=2)
    first = full.indices[:40]
    rest = plan_epoch(100, rank=0, world_size=1, batch_size=8, seed=3, epoch=2, start=40)
    assert np.array_equal(np.concatenate([first, rest.indices]), full.indices)
    assert rest.steps == full.steps - 5

    # The world changed (elastic): the rest of the order is sharded over 2 ranks, each sample once.
    halves = [plan_epoch(100, rank=r, world_size=2, batch_size=4, seed=3, epoch=2, start=40) for r in (0, 1)]
    union = np.sort(np.concatenate([h.indices for h in halves]))
    assert np.array_equal(union, np.sort(full.indices[40:40 + 56]))  # 7 steps of 8 remain (4 samples dropped)
    # max_steps counts the steps before `start` as taken.
    assert plan_epoch(100, rank=0, world_size=1, batch_size=8, seed=3, epoch=2, start=40, max_steps=7).steps == 2


@pytest.mark.parametrize("values,patience,stop_after", [
    ([0.5, 0.6, 0.6, 0.6], 2, 3),      # no gain after epoch 2: stop after epoch 4 (index 3)
    ([0.5, 0.6, 0.7, 0.8], 1, None),   # always improving
    ([0.5, 0.5, 0.9, 0.9, 0.9], 2, 4),
])
def test_early_stopping_counts_epochs_without_improvement(values: list[float], patience: int,
                                                          stop_after: int | None) -> None:
    rule = EarlyStopping("val_accuracy", patience)
    answers = [rule.on_epoch_end(None, {"epoch": i + 1, "val_accuracy": v}) for i, v in enumerate(values)]  # type: ignore[arg-type]
    assert answers.index(True) == stop_after if stop_after is not None else not any(answers)


def test_early_stopping_minimises_losses_and_honours_min_delta() -> None:
    history = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.95}, {"epoch": 3, "val_loss": 0.94}]
    assert EarlyStopping("val_loss", 2, min_delta=0.1).should_stop(history)
    assert not EarlyStopping("val_loss", 2, min_delta=0.0).should_stop(history)
    with pytest.raises(ConfigError, match="has no value at epoch 1"):
        EarlyStopping("val_accuracy", 2).should_stop([{"epoch": 1, "val_accuracy": None}])


def test_early_stopping_resumes_from_the_history() -> None:
    cfg = load_config(None, ["callbacks.early_stopping_metric=val_accuracy", "callbacks.early_stopping_patience=2"])
    callbacks = CallbackList.from_config(cfg)
    callbacks.begin(None, [{"epoch": 1, "val_accuracy": 0.9}, {"epoch": 2, "val_accuracy": 0.8}])  # type: ignore[arg-type]
    assert callbacks.epoch_end(None, {"epoch": 3, "val_accuracy": 0.85})  # type: ignore[arg-type]


def test_user_callbacks_load_by_import_path_or_fail_in_one_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_hooks.py").write_text(
        "from hvdtrain.callbacks import Callback\n"
        "class Hook(Callback):\n"
        "    def __init__(self, cfg):\n        self.lr = cfg.optim.lr\n"
        "def not_a_callback(cfg):\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["optim.lr=0.3"])
    assert load_user_callback("my_hooks:Hook", cfg).lr == 0.3
    for path, words in (("my_hooks.Hook", "is not 'package.module:name'"),
                        ("my_hooks:Missing", "cannot be imported"),
                        ("no_such_module:Hook", "cannot be imported"),
                        ("my_hooks:not_a_callback", "has none of the hooks")):
        with pytest.raises(ConfigError, match=words) as info:
            load_user_callback(path, cfg)
        assert "\n" not in str(info.value)


def test_training_state_round_trips_and_assigns_in_place() -> None:
    sums = {"loss": 1.0, "count": 3.0, "f1_macro.tp": [1.0, 0.0], "skipped": 4.0}  # named sums, as plain JSON
    state = TrainingState(epoch=2, position=64, step=50, history=[{"epoch": 1}], sums=sums)
    same = TrainingState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert same == state
    # Checkpoints from before named sums: (loss, correct, count), and then with skipped samples.
    for older, skipped in (([1.0, 2.0, 3.0], 0.0), ([1.0, 2.0, 3.0, 4.0], 4.0)):
        assert TrainingState.from_dict(state.to_dict() | {"sums": older}).sums == {
            "loss": 1.0, "accuracy.correct": 2.0, "count": 3.0, "skipped": skipped}
    holder = TrainingState()
    holder.assign(state)
    state.history.append({"epoch": 2})
    assert holder.history == [{"epoch": 1}]  # a copy, not shared
    holder.end_epoch({"epoch": 3})
    assert (holder.epoch, holder.position, holder.sums) == (3, 0, {})


class _Files:
    def save(self, directory: Path, kind: str) -> list[str]:
        (directory / "state.bin").write_bytes(b"x")
        return ["state.bin"]


def test_checkpoint_names_sort_in_training_order_and_leftovers_are_removed(tmp_path: Path) -> None:
    cfg = load_config(None, ["checkpoint.keep_last=3", "checkpoint.best_metric=null"])
    writer = Checkpointer(cfg, tmp_path, enabled=True)
    state = TrainingState(started=True)
    for step in range(1, 8):  # 3 steps per epoch: mid-epoch checkpoints and epoch ends interleave
        state.step, state.position = step, (step % 3) * 32
        if step % 3 == 0:
            state.end_epoch({"epoch": state.epoch + 1})
        writer.save(_Files(), state)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-0001-step-00000005", "epoch-0002", "epoch-0002-step-00000007"]  # the last 3
    assert newest(tmp_path).state.step == 7
    stale = tmp_path / "checkpoints" / ".epoch-0003.abc"
    stale.mkdir()
    # A kill while pruning: before, a half-deleted checkpoint kept its name (no manifest, never pruned
    # again); now pruning renames first, and both kinds of remains go at the next start.
    half_deleted = tmp_path / "checkpoints" / "epoch-0001"
    half_deleted.mkdir()
    (half_deleted / "model.pt").write_bytes(b"partial")
    retired = tmp_path / "checkpoints" / ".pruned.epoch-0001-step-00000002"
    retired.mkdir()
    writer.remove_leftovers()
    assert not stale.exists() and not half_deleted.exists() and not retired.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == names  # complete ones stay


@pytest.mark.parametrize("override,words", [
    ("callbacks.early_stopping_metric=val_acc", "did you mean 'val_accuracy'"),
    ("checkpoint.best_metric=acc", "is not a metrics.jsonl field"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps"),
    ("elastic.commit_every_steps=0", "elastic.commit_every_steps"),
    ("optim.param_groups=['head.*']", "is not PATTERN=MULTIPLIER"),
    ("optim.param_groups=['head.*=fast']", "is not PATTERN=MULTIPLIER"),
    ("model.name=vgg", "neither a built-in model"),
    ("model.depth=10", r"is not 6n \+ 2"),
    ("prune.method=magnitude", "prune.method"),
    ("prune.target_sparsity=1", "prune.target_sparsity"),
    ("distill.alpha=2", "distill.alpha"),
    ("regularization.l1=-1", "regularization.l1"),
    ("augment.kernel=gpu", "augment.kernel"),
])
def test_new_options_refuse_bad_values_in_one_line(override: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_pruning_epochs_must_leave_room() -> None:
    from hvdtrain.features.pruning import Pruner

    for overrides, words in ((["prune.method=unstructured", "prune.start_epoch=3", "prune.end_epoch=2"],
                              "start_epoch < end_epoch"),
                             (["prune.method=channels", "prune.schedule=oneshot", "prune.start_epoch=10"],
                              "leaves no epoch to prune in")):
        with pytest.raises(ConfigError, match=words):
            Pruner(load_config(None, ["train.epochs=5", *overrides]), steps_per_epoch=10)


def test_a_checkpoint_resumes_only_in_its_task() -> None:
    classification, regression = load_config(), load_config(None, ["task=regression", "data.name=diabetes",
                                                                   "model.name=mlp"])
    written = Checkpoint(Path("epoch-0001"), {"identity": identity(regression)})
    check_compatible(written, regression)
    with pytest.raises(CheckpointError, match="task='regression' there, 'classification' here"):
        check_compatible(written, load_config(None, ["data.name=diabetes", "model.name=mlp"]))
    older = {k: v for k, v in identity(classification).items() if k != "task"}  # before tasks existed
    check_compatible(Checkpoint(Path("epoch-0001"), {"identity": older}), classification)
