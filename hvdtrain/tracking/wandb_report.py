"""Weights & Biases on rank 0 (tracking.wandb_project): the run directory's rows as W&B history, the same way as
MLflow's (hvdtrain/tracking/sync.py): what was sent is kept in run.dir/tracking-wandb.json, so a resumed run
reattaches to its W&B run and sends each epoch once.

W&B writes the run under run.dir/wandb/ (`wandb.init(dir=run.dir)`). tracking.wandb_mode=offline (the default)
writes only there, for compute nodes without internet: `wandb sync RUN_DIR/wandb/offline-run-*` uploads it later
from a machine with internet. online sends it live as well. W&B's console capture is off (rank 0's progress lines
stay as they are).

W&B writes its local run (the .wandb log) only when the run finishes: a start killed with kill -9 leaves a folder
holding no row (seen with wandb 0.29: 7 bytes after three logged rows and 3 s). So what counts as sent is what a
closed local run holds: a resumed start logs every row after the last closed start's, under the same run id, and
renames the killed starts' folders to `unclosed-<folder>` (`wandb sync RUN_DIR/wandb/offline-run-*` then uploads
each row once; online, W&B keeps what reached it and drops steps it already has).

History: one `log` per global optimizer step, with that step; an epoch's row (metrics.jsonl's numbers, `epoch`
among them) and, with run.log_every_steps, the step rows (steps.jsonl's, under `step/`) merged where they share a
step. The summary gets summary.json's final metrics; config.yaml, summary.json, eval.json and the plots are copied
into the run's files (under hvdtrain/), the model is logged as an artifact with tracking.log_model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import CallbackContext
from hvdtrain.config import Config
from hvdtrain.files import write_atomic
from hvdtrain.tracking.sync import (
    ARTIFACTS,
    GROUP_ENV,
    MODEL_FILES,
    experiment_name,
    numbers,
    one_line,
    params_of,
    rows,
    system_facts,
)
from hvdtrain.tracking.tracker import Tracker

STATE_FILE = "tracking-wandb.json"


@dataclass
class WandbState:
    """tracking-wandb.json: the W&B run's id, and what its closed local runs hold (`closed_folders`: W&B's folders
    under run.dir/wandb/ that a start closed with `finish`; their rows: epochs up to closed_epochs, steps up to
    closed_step)."""

    project: str
    run_id: str | None = None
    closed_epochs: int = 0
    closed_step: int = 0
    closed_folders: list[str] = field(default_factory=list)
    finished: bool = False

    @classmethod
    def read(cls, run_dir: Path) -> WandbState | None:
        path = run_dir / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / STATE_FILE, json.dumps(asdict(self), indent=1) + "\n")


def history_rows(run_dir: Path, sent_epochs: int, sent_step: int) -> list[tuple[int, dict[str, float]]]:
    """(step, values) for every row of metrics.jsonl and steps.jsonl not sent yet, one per step, in step order."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows(run_dir / "steps.jsonl"):
        if row["step"] > sent_step:
            merged.setdefault(int(row["step"]), {}).update(
                {f"step/{k}": v for k, v in numbers(row, ("epoch", "step")).items()})
    for row in rows(run_dir / "metrics.jsonl"):
        if row["epoch"] > sent_epochs:
            merged.setdefault(int(row.get("step", row["epoch"])), {}).update(numbers(row, ("step",)))
    return sorted(merged.items())


class WandbReport(Tracker):
    """Rank 0's W&B reporter; a failure (wandb.init timing out online, a refused request) prints one warning and
    the run goes on without W&B."""

    def __init__(self, cfg: Config, run_dir: Path, resuming: bool, say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.say = cfg, run_dir, say
        project = cfg.tracking.wandb_project
        assert project is not None
        earlier = WandbState.read(run_dir) if resuming else None
        self.state = earlier if earlier is not None and earlier.project == project else WandbState(project)
        self.logged_epochs, self.logged_step = self.state.closed_epochs, self.state.closed_step  # by this start
        self.run: Any = None
        self.failed = False

    def _guard(self, action: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001  # any tracker failure: warn once, train on
            self.failed = True
            self.say(f"warning: tracking: W&B ({self.cfg.tracking.wandb_mode}) failed ({one_line(error)}); training "
                     "goes on without it")

    def _open(self) -> None:
        import os

        import wandb

        tracking = self.cfg.tracking
        if self.state.run_id is not None:
            self._set_unclosed_aside(self.state.run_id)
        settings = wandb.Settings(silent=True, console="off", init_timeout=max(tracking.timeout_s, 30.0))
        mode: Any = tracking.wandb_mode  # offline | online (the config's choices)
        self.run = wandb.init(project=tracking.wandb_project, mode=mode, dir=str(self.run_dir),
                              id=self.state.run_id, resume="allow" if self.state.run_id else None,
                              name=tracking.run_name or self.run_dir.name, group=os.environ.get(GROUP_ENV),
                              job_type=experiment_name(self.cfg), tags=list(tracking.tags),
                              config=params_of(self.cfg), settings=settings)
        if self.state.run_id is None:
            self.state.run_id = self.run.id
            self.state.write(self.run_dir)

    def _set_unclosed_aside(self, run_id: str) -> None:
        """Renames the folders of earlier starts of this W&B run that never closed (killed)."""
        for folder in sorted((self.run_dir / "wandb").glob(f"*run-*-{run_id}")):
            if folder.is_dir() and not folder.is_symlink() and folder.name not in self.state.closed_folders:
                folder.rename(folder.with_name(f"unclosed-{folder.name}"))

    def _send(self) -> None:
        if self.run is None:
            return
        pending = history_rows(self.run_dir, self.logged_epochs, self.logged_step)
        for step, values in pending:
            self.run.log(values, step=step)
        if pending:
            self.logged_epochs = max([self.logged_epochs, *(int(v["epoch"]) for _, v in pending if "epoch" in v)])
            self.logged_step = max(self.logged_step, pending[-1][0])

    def _close(self) -> None:
        if self.run is None:
            return
        self._send()
        summary = json.loads((self.run_dir / "summary.json").read_text())
        self.run.summary.update({f"final/{k}": v for k, v in summary.get("final", {}).items()
                                 if isinstance(v, (int, float))})
        self.run.summary.update({f"system/{k}": v for k, v in system_facts(summary).items()})
        files = [self.run_dir / name for name in ARTIFACTS if (self.run_dir / name).is_file()]
        files += sorted(self.run_dir.glob("*.png"))
        saved = Path(self.run.dir) / "hvdtrain"  # the run's files folder, which W&B uploads (not its config.yaml)
        saved.mkdir(exist_ok=True)
        for path in files:
            shutil.copy2(path, saved / path.name)
        if self.cfg.tracking.log_model:
            import wandb

            model = wandb.Artifact(f"model-{self.run.id}", type="model")
            for name in MODEL_FILES:
                if (self.run_dir / name).is_file():
                    model.add_file(str(self.run_dir / name))
            self.run.log_artifact(model)
        folder = Path(self.run.dir).parent.name  # offline-run-<time>-<id> (online: run-<time>-<id>)
        self.run.finish()
        self.run = None
        self.state.closed_epochs, self.state.closed_step = self.logged_epochs, self.logged_step
        self.state.closed_folders.append(folder)
        self.state.finished = True
        self.state.write(self.run_dir)

    def on_train_begin(self, ctx: CallbackContext) -> None:
        if self.state.run_id is None:
            self.state.write(self.run_dir)  # a fresh run: forget an earlier run's W&B state
        if self.run is None:  # not again after an elastic reset: the W&B run is open
            self._guard(self._open)
        self._guard(self._send)

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self._guard(self._send)

    def finish(self) -> None:
        self._guard(self._close)
