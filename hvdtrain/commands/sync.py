"""`python -m hvdtrain sync RUN_DIR`: sends a run directory's tracker data that did not go while it trained (the
server was down, the node had no network), and closes the tracker run if the run has finished (docs/tracking.md).
"""

from __future__ import annotations

from pathlib import Path

from hvdtrain.config import load_config
from hvdtrain.errors import UserError
from hvdtrain.tracking.sync import TrackingState, client, one_line, send_pending


def sync_run(run_dir: Path) -> str:
    """Brings the run's MLflow run up to run_dir; returns one line saying what it holds now."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"sync: {run_dir} holds no config.yaml: pass a run directory (run.dir of a training run)")
    cfg = load_config(run_dir / "config.yaml")
    state = TrackingState.read(run_dir)
    if state is None:
        if not cfg.tracking.mlflow_uri:
            raise UserError(f"sync: {run_dir} was trained without tracking.mlflow_uri and has no tracking.json: "
                            "nothing to send to")
        state = TrackingState(cfg.tracking.mlflow_uri)
    finished = (run_dir / "summary.json").is_file()
    try:
        send_pending(run_dir, cfg, state, client(cfg, state.mlflow_uri), final=finished)
    except Exception as error:  # noqa: BLE001  # the server's failure, in one line
        raise UserError(f"sync: MLflow at {state.mlflow_uri} failed ({one_line(error)}): check the server and run "
                        "sync again (what went is kept in tracking.json)") from None
    return (f"synced {run_dir} to MLflow run {state.run_id} at {state.mlflow_uri}: {state.sent_epochs} epoch(s)"
            + (", finished" if state.finished else ", still running"))
