"""The tracker plumbing in-process: W&B's history rows from a run directory, the user's tracker factory and its
guard (a failing tracker warns once and the run goes on). Real trackers against real runs:
tests/distributed/test_tracking.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hvdtrain.callbacks import CallbackContext
from hvdtrain.config import load_config
from hvdtrain.errors import ConfigError
from hvdtrain.tracking import Tracker
from hvdtrain.tracking.tracker import Guarded, load_user_tracker, rank0_trackers
from hvdtrain.tracking.wandb_report import history_rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_history_rows_merge_epoch_and_step_rows_in_step_order_and_skip_what_was_sent(tmp_path: Path) -> None:
    write_rows(tmp_path / "metrics.jsonl", [{"epoch": 1, "step": 4, "val_loss": 0.5, "note": "x"},
                                            {"epoch": 2, "step": 8, "val_loss": 0.25}])
    write_rows(tmp_path / "steps.jsonl", [{"epoch": e, "step": s, "loss": s / 10} for e, s in
                                          ((1, 2), (1, 4), (2, 6), (2, 8))])
    assert history_rows(tmp_path, 0, 0) == [
        (2, {"step/loss": 0.2}), (4, {"step/loss": 0.4, "epoch": 1.0, "val_loss": 0.5}),
        (6, {"step/loss": 0.6}), (8, {"step/loss": 0.8, "epoch": 2.0, "val_loss": 0.25})]
    assert history_rows(tmp_path, 1, 4) == history_rows(tmp_path, 0, 0)[2:]


class Failing(Tracker):
    calls = 0

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        Failing.calls += 1
        raise RuntimeError("dashboard unreachable\nsecond line")


def test_a_failing_user_tracker_warns_once_and_is_not_called_again(tmp_path: Path) -> None:
    said: list[str] = []
    guarded = Guarded("tracking.user x:y", Failing, said.append)
    ctx = CallbackContext(load_config(None), 0, 1, tmp_path)
    for epoch in (1, 2, 3):
        assert guarded.on_epoch_end(ctx, {"epoch": epoch}) is None  # a tracker never votes to stop
    guarded.finish()
    assert Failing.calls == 1
    assert said == ["warning: tracking: tracking.user x:y failed (RuntimeError: dashboard unreachable); training "
                    "goes on without it"]


def test_a_factory_that_fails_costs_one_warning(tmp_path: Path) -> None:
    said: list[str] = []

    def factory() -> Tracker:
        raise ValueError("no token")

    guarded = Guarded("tracking.user x:y", factory, said.append)
    guarded.on_train_begin(CallbackContext(load_config(None), 0, 1, tmp_path))
    assert len(said) == 1 and "ValueError: no token" in said[0]


def test_a_factory_returning_no_tracker_costs_one_warning() -> None:
    said: list[str] = []
    Guarded("tracking.user x:y", lambda: 42, said.append)  # type: ignore[arg-type,return-value]
    assert said == ["warning: tracking: tracking.user x:y returned int, which has none of the hooks on_train_begin, "
                    "on_epoch_end, on_step_report, on_train_end, finish: return a hvdtrain.tracking.Tracker; "
                    "training goes on without it"]


@pytest.mark.parametrize("path, fragment", [
    ("csv_tracker", "is not 'package.module:factory'"),
    ("no_such_module_here:make", "cannot be imported"),
    ("csv_tracker:CSV_TRACKER_DOES_NOT_HAVE_THIS", "cannot be imported"),
    ("json:__doc__", "is a str, not a factory"),
])
def test_user_tracker_paths_are_checked(path: str, fragment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3] / "examples"))
    with pytest.raises(ConfigError, match=fragment) as info:
        load_user_tracker(load_config(None, [f"tracking.user={path}"]))
    assert "\n" not in str(info.value)


def test_the_example_tracker_is_built_on_rank_0_without_tracker_packages(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3] / "examples"))
    cfg = load_config(None, ["tracking.user=csv_tracker:make_tracker"])
    trackers = rank0_trackers(cfg, tmp_path, False, print, load_user_tracker(cfg))
    assert [type(t).__name__ for t in trackers] == ["Guarded"]
    ctx = CallbackContext(cfg, 0, 1, tmp_path)
    for epoch in (1, 2):
        trackers[0].on_epoch_end(ctx, {"epoch": epoch, "val_loss": 1.0 / epoch})
    assert (tmp_path / "tracked.csv").read_text().splitlines() == ["epoch,val_loss", "1,1.0", "2,0.5"]


def test_wandb_online_without_a_login_costs_one_warning_and_training_goes_on(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb (requirements.txt) is not installed")
    from hvdtrain.tracking.wandb_report import WandbReport

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: no login
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(None, ["tracking.wandb_project=p", "tracking.wandb_mode=online"])
    said: list[str] = []
    report = WandbReport(cfg, tmp_path, False, said.append)
    ctx = CallbackContext(cfg, 0, 1, tmp_path)
    report.on_train_begin(ctx)
    report.on_epoch_end(ctx, {"epoch": 1, "step": 4, "val_loss": 1.0})
    report.finish()
    assert len(said) == 1 and said[0].startswith("warning: tracking: W&B (online) failed (") and \
        said[0].endswith("training goes on without it"), said
