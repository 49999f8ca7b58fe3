"""The sweep's parts without running trials: grid parsing, planning, ranking, result reading, csv and table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hvdtrain.commands import sweep
from hvdtrain.config import load_config
from hvdtrain.errors import UserError


@pytest.mark.parametrize("raw, values", [
    ("0.1,0.01", ["0.1", "0.01"]),
    ("0.1", ["0.1"]),
    (" 1 , 2 ", ["1", "2"]),
    ("[8],[8,16]", ["[8]", "[8,16]"]),
    ("[],[16, 32]", ["[]", "[16, 32]"]),
    ("[[1,2],[3]],[4]", ["[[1,2],[3]]", "[4]"]),
    ("{a: 1, b: 2},{a: 3}", ["{a: 1, b: 2}", "{a: 3}"]),
    ("'a,b',\"c,[d\",e", ["'a,b'", "\"c,[d\"", "e"]),
    ("null,true", ["null", "true"]),
])
def test_split_values(raw: str, values: list[str]) -> None:
    assert sweep.split_values(raw) == values


@pytest.mark.parametrize("raw", ["[8", "8]", "[8}", "{a: [1}", "'abc", "[1,2]]"])
def test_split_values_refuses_unbalanced(raw: str) -> None:
    with pytest.raises(ValueError):
        sweep.split_values(raw)


@pytest.mark.parametrize("spec, fragment", [
    ("optim.lr", "is not key=v1,v2"),
    ("=0.1,0.2", "is not key=v1,v2"),
    ("optim lr=0.1", "is not key=v1,v2"),
    ("optim.lr=", "has an empty value"),
    ("optim.lr=0.1,,0.2", "has an empty value"),
    ("optim.lr=0.1,", "has an empty value"),
    ("model.channels=[8,[16]", "missing closing ]"),
    ("run.dir=a,b", "choose the folder with --out"),
])
def test_parse_axis_errors(spec: str, fragment: str) -> None:
    with pytest.raises(UserError, match="--grid") as info:
        sweep.parse_axis(spec)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_grid_and_combinations() -> None:
    axes = sweep.parse_grid(["optim.lr=0.1,0.01", "model.hidden_units=[16],[32],[]"])
    assert axes == [sweep.Axis("optim.lr", ("0.1", "0.01")),
                    sweep.Axis("model.hidden_units", ("[16]", "[32]", "[]"))]
    combos = sweep.combinations(axes)
    assert len(combos) == 6
    assert combos[0] == {"optim.lr": "0.1", "model.hidden_units": "[16]"}
    assert combos[1] == {"optim.lr": "0.1", "model.hidden_units": "[32]"}  # the last axis varies fastest
    assert combos[-1] == {"optim.lr": "0.01", "model.hidden_units": "[]"}
    with pytest.raises(UserError, match="names optim.lr twice"):
        sweep.parse_grid(["optim.lr=0.1", "optim.lr=0.2"])
    with pytest.raises(UserError, match="at least one --grid"):
        sweep.parse_grid([])


def test_plan_trials_validates_every_combination_first(tmp_path: Path) -> None:
    axes = sweep.parse_grid(["optim.lr=0.1,0.01", "model.hidden_units=[16],[32]"])
    trials = sweep.plan_trials(None, ["train.epochs=1"], axes, tmp_path / "sweep", ["horovodrun", "-np", "2"])
    assert [t.name for t in trials] == ["trial-001", "trial-002", "trial-003", "trial-004"]
    cmd = trials[1].command
    assert cmd[:3] == ["horovodrun", "-np", "2"] and cmd[4:7] == ["-m", "hvdtrain", "train"]
    assert cmd[-5:] == ["train.epochs=1", "optim.lr=0.1", "model.hidden_units=[32]",
                        f"run.dir={tmp_path / 'sweep' / 'trial-002'}", "run.overwrite=true"]
    cfg = load_config(None, cmd[7:])  # the trial's words resolve as the trial will resolve them
    assert cfg.model.hidden_units == (32,) and cfg.optim.lr == 0.1 and cfg.train.epochs == 1
    assert not (tmp_path / "sweep").exists()

    with pytest.raises(UserError, match=r"trial-002 \(optim.lr=-1\): config key optim.lr"):
        sweep.plan_trials(None, [], sweep.parse_grid(["optim.lr=0.1,-1"]), tmp_path / "s", [])
    with pytest.raises(UserError, match="did you mean 'optim.lr'"):
        sweep.plan_trials(None, [], sweep.parse_grid(["optim.lrr=0.1,0.2"]), tmp_path / "s", [])
    with pytest.raises(UserError, match="run.dir is set per trial"):
        sweep.plan_trials(None, ["run.dir=x"], axes, tmp_path / "s", [])


def test_plan_trials_names_grow_with_the_grid(tmp_path: Path) -> None:
    axes = sweep.parse_grid([f"seed={','.join(map(str, range(1000)))}"])
    trials = sweep.plan_trials(None, [], axes, tmp_path, [])
    assert trials[0].name == "trial-0001" and trials[-1].name == "trial-1000"


def fake_trial(index: int, status: str, value: float | str | None = None, metric: str = "val_accuracy") -> sweep.Trial:
    result: dict = {"status": status, "wall_time_s": 1.0 + index, **({"epochs": 2} if status == "ok" else {})}
    if value is not None:
        result[metric] = value
    return sweep.Trial(index, f"trial-{index:03d}", {"optim.lr": str(index / 10)}, [], Path(f"t{index}"), result)


def test_ranked_maximises_accuracy_minimises_loss_failed_last() -> None:
    trials = [fake_trial(1, "failed"), fake_trial(2, "ok", 0.5), fake_trial(3, "ok", 0.9), fake_trial(4, "ok", ""),
              fake_trial(5, "ok", 0.9)]
    assert [t.index for t in sweep.ranked(trials, "val_accuracy")] == [3, 5, 2, 4, 1]  # ties keep trial order
    losses = [fake_trial(1, "ok", 0.3, "val_loss"), fake_trial(2, "failed"), fake_trial(3, "ok", 0.1, "val_loss")]
    assert [t.index for t in sweep.ranked(losses, "val_loss")] == [3, 1, 2]
    assert sweep.ranked([sweep.Trial(1, "trial-001", {}, [], Path("x"))], "val_loss") == []  # not run yet


def write_run(run_dir: Path, records: list[dict]) -> dict:
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"epochs": len(records), "world_size": 2, "wall_time_s": 3.14159, "final": records[-1]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_read_metric_takes_the_best_epoch(tmp_path: Path) -> None:
    records = [{"epoch": 1, "val_loss": 0.9, "val_accuracy": 0.5, "train_loss": 1.0},
               {"epoch": 2, "val_loss": 0.4, "val_accuracy": 0.8, "train_loss": 0.5},
               {"epoch": 3, "val_loss": 0.6, "val_accuracy": 0.7, "train_loss": 0.2}]
    summary = write_run(tmp_path / "run", records)
    acc = sweep.read_metric(tmp_path / "run", summary, "val_accuracy")
    assert acc == {"val_accuracy": 0.8, "best_epoch": 2, "final_val_accuracy": 0.7, "epochs": 3, "world_size": 2,
                   "train_time_s": 3.14}
    loss = sweep.read_metric(tmp_path / "run", summary, "train_loss")
    assert loss["train_loss"] == 0.2 and loss["best_epoch"] == 3
    with pytest.raises(UserError, match=r"--metric val_acc is not in .*metrics.jsonl \(it has val_loss, val_accuracy, "
                                        r"train_loss\): pass one of them"):
        sweep.read_metric(tmp_path / "run", summary, "val_acc")


def test_read_metric_without_values(tmp_path: Path) -> None:
    records = [{"epoch": 1, "val_accuracy": None, "train_accuracy": 0.4}]  # val_fraction=0: no validation
    summary = write_run(tmp_path / "run", records)
    result = sweep.read_metric(tmp_path / "run", summary, "val_accuracy")
    assert result["val_accuracy"] == "" and result["best_epoch"] == "" and result["final_val_accuracy"] == ""


def test_csv_and_table(tmp_path: Path) -> None:
    axes = [sweep.Axis("optim.lr", ("0.1", "0.2", "0.3"))]
    trials = [fake_trial(1, "ok", 0.5), fake_trial(2, "ok", 0.75), fake_trial(3, "failed")]
    trials[0].result["rank"], trials[1].result["rank"] = 2, 1
    trials[2].result.update(exit_code=2, error="hvdtrain: error: data, file 'x.npz' not found")
    trials.append(sweep.Trial(4, "trial-004", {"optim.lr": "0.4"}, [], Path("t4")))  # not run: no row
    sweep.write_csv(tmp_path / "sweep.csv", trials, axes, "val_accuracy")
    with (tmp_path / "sweep.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == sweep.columns(axes, "val_accuracy")
    assert [r["trial"] for r in rows] == ["trial-001", "trial-002", "trial-003"]
    assert rows[1]["rank"] == "1" and rows[1]["val_accuracy"] == "0.75" and rows[1]["optim.lr"] == "0.2"
    assert rows[2]["status"] == "failed" and rows[2]["error"].endswith("'x.npz' not found")
    assert not list(tmp_path.glob(".sweep.csv*"))  # no temporary file left

    lines = sweep.format_table(trials, axes, "val_accuracy").splitlines()
    assert lines[0].split() == ["rank", "trial", "status", "optim.lr", "val_accuracy", "epochs", "wall_time_s"]
    assert [ln.split()[:5] for ln in lines[1:]] == [["1", "trial-002", "ok", "0.2", "0.7500"],
                                                    ["2", "trial-001", "ok", "0.1", "0.5000"],
                                                    ["trial-003", "failed", "0.3", "4.0"]]


def testlast_error_prefers_the_hvdtrain_error_line(tmp_path: Path) -> None:
    log = tmp_path / "trial-001.log"
    log.write_text("# cmd\n[1,0]<stderr>:hvdtrain: error: data.path 'm.npz' not found\n"
                   "Primary job  terminated normally, but 1 process returned\n\n")
    assert sweep.last_error(log, 1) == "hvdtrain: error: data.path 'm.npz' not found"
    log.write_text("# cmd\nTraceback ...\nRuntimeError: boom\n")
    assert sweep.last_error(log, 1) == "RuntimeError: boom"
    log.write_text("# cmd\n")
    assert sweep.last_error(log, -9) == "exited -9 with no output"
    assert sweep.last_error(log, 0) == "exited 0 without writing summary.json"


@pytest.mark.races
def test_a_stop_while_a_trial_starts_stops_the_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM landing just after the trial's process is created, before the sweep holds it (the window where
    a stop once left a trial running after the sweep had gone): the trial is stopped, then the sweep."""
    import os
    import signal
    import subprocess
    import sys

    started: list[subprocess.Popen] = []

    class StoppedWhileStarting(subprocess.Popen):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)
            os.kill(os.getpid(), signal.SIGTERM)  # delivered here, inside Popen, as under load

    monkeypatch.setattr(sweep.subprocess, "Popen", StoppedWhileStarting)
    (tmp_path / "trial-001").mkdir()
    trial = sweep.Trial(1, "trial-001", {}, [sys.executable, "-c", "import time; time.sleep(60)"],
                        tmp_path / "trial-001")
    with pytest.raises(KeyboardInterrupt), sweep._STOPS.installed():
        sweep.run_trial(trial, "val_accuracy", None)
    assert len(started) == 1 and started[0].poll() is not None, "the trial outlived the stop"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
