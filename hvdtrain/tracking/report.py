"""The live side of tracking: a reporter callback on rank 0 that sends the run directory's news after every
epoch and the whole run at its end (hvdtrain/tracking/sync.py), and never stops training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvdtrain.callbacks import CallbackContext
from hvdtrain.config import Config
from hvdtrain.tracking.sync import TrackingState, client, one_line, send_pending
from hvdtrain.tracking.tracker import Tracker


class TrackingReport(Tracker):
    """Rank 0's MLflow reporter. `resuming`: the run continues an earlier one in run.dir (train.resume, an elastic
    restart), so it reattaches to the tracker run tracking.json names; otherwise it starts a new one.

    The first failure (server unreachable, a refused request) costs one request's timeout and prints one
    warning; the reporter then sends nothing more in this process, and `python -m hvdtrain sync RUN_DIR` sends
    the rest later from what run.dir holds."""

    def __init__(self, cfg: Config, run_dir: Path, resuming: bool, say: Callable[[str], None]) -> None:
        self.cfg, self.run_dir, self.say = cfg, run_dir, say
        uri = cfg.tracking.mlflow_uri
        assert uri is not None
        earlier = TrackingState.read(run_dir) if resuming else None
        self.state = earlier if earlier is not None and earlier.mlflow_uri == uri else TrackingState(uri)
        self.failed = False
        self._client: Any = None

    def _send(self, final: bool = False) -> None:
        if self.failed:
            return
        try:
            if self._client is None:
                self._client = client(self.cfg, self.state.mlflow_uri)
            send_pending(self.run_dir, self.cfg, self.state, self._client, final=final)
        except Exception as error:  # noqa: BLE001  # any tracker failure: warn once, train on
            self.failed = True
            self.say(f"warning: tracking: MLflow at {self.state.mlflow_uri} failed ({one_line(error)}); training "
                     f"goes on untracked; `python -m hvdtrain sync {self.run_dir}` sends the rest later")

    def on_train_begin(self, ctx: CallbackContext) -> None:
        if self.state.run_id is None:
            self.state.write(self.run_dir)  # a fresh run: forget an earlier run's tracker state
        self._send()

    def on_epoch_end(self, ctx: CallbackContext, record: dict[str, Any]) -> None:
        self._send()

    def finish(self) -> None:
        """After summary.json is written: the last rows, the artifacts, and the run closed."""
        self._send(final=True)
